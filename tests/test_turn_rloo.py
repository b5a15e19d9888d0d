"""turn_rloo: hand-computed values, loop == vectorised, and the stopping-bandit toy where
turn_grpo's expected update is not the policy gradient and turn_rloo's is."""

from __future__ import annotations

import itertools
import math
import random

import pytest
import torch

from deltabelief.advantages import get_estimator, turn_rloo
from estimator_oracles import _turn_rloo_loop

# Group 7: three rollouts, rollout 1 stopped after one turn. Group 3: one rollout.
R = torch.tensor([[1.0, 2.0], [3.0, 100.0], [5.0, 4.0], [7.0, -1.0]])
MASK = torch.tensor([[1, 1], [1, 0], [1, 1], [1, 1]], dtype=torch.bool)
GROUPS = torch.tensor([7, 7, 7, 3])


def test_turn_rloo_by_hand():
    a = turn_rloo(R, MASK, GROUPS)
    # returns-to-go: row 0 [3, 2], row 1 [3, -] (its 100 was never played), row 2 [9, 4], row 3 [6, -1]
    # t=1, group 7: row 0: 3 − (3 + 9)/2 = −3; row 1: 3 − (3 + 9)/2 = −3; row 2: 9 − (3 + 3)/2 = 6
    # t=2, group 7: only rows 0 and 2 played: row 0: 2 − 4 = −2; row 2: 4 − 2 = 2
    # group 3 has no other rollout: baseline 0, A = G
    expected = torch.tensor([[-3.0, -2.0], [-3.0, 0.0], [6.0, 2.0], [6.0, -1.0]])
    assert torch.equal(a, expected)
    assert get_estimator("turn_rloo").level == "trajectory"  # r_eog once, so G is the trajectory's return


@pytest.mark.parametrize("seed", range(10))
def test_turn_rloo_vectorised_equals_loop(seed):
    gen = random.Random(seed)
    batch, turns = gen.randint(1, 10), gen.randint(1, 6)
    groups = torch.tensor([gen.randint(0, 2) for _ in range(batch)])
    mask = torch.tensor([[t < n for t in range(turns)] for n in (gen.randint(0, turns) for _ in range(batch))])
    rewards = torch.tensor([[gen.choice([-1.0, 0.0, 0.5, gen.gauss(0, 1)]) for _ in range(turns)]
                            for _ in range(batch)])
    assert torch.allclose(turn_rloo(rewards, mask, groups), _turn_rloo_loop(rewards, mask, groups), atol=1e-6)


# ------------------------------------------------------------------------------------------
# The stopping bandit. Turn 1: stop (guess, outcome reward A_WIN) with p1 = σ(θ1), or ask
# (belief reward C1). Turn 2: stop (outcome B2) with p2 = σ(θ2), or ask (belief reward C2);
# turn 3 is a forced guess (outcome B3, no parameter). Three trajectories:
#   stop@1: return A_WIN; stop@2: C1 + B2; stop@3: C1 + C2 + B3.
# J = p1·A_WIN + (1 − p1)·[p2·(C1 + B2) + (1 − p2)·(C1 + C2 + B3)], and the policy gradient is
#   dJ/dθ1 = p1(1 − p1)·(A_WIN − V2),  V2 = C1 + p2·B2 + (1 − p2)·(C2 + B3)
#   dJ/dθ2 = (1 − p1)·p2(1 − p2)·(B2 − C2 − B3).
# Asking more earns more belief reward (C2), so continuing at turn 1 is worth V2 = 1.2 > A_WIN.
A_WIN, C1, C2, B2, B3 = 1.0, 0.1, 0.6, 0.8, 0.8
P1 = P2 = 0.5  # θ = (0, 0)
GROUP = 4


def _trajectories(level: str):
    """(probability, per-turn rewards at the estimator's level, per-turn score ∇log π) per trajectory.

    ``turn`` level: r_eog on every turn (turn_grpo); ``trajectory`` level: r_eog on the last turn.
    """
    outcome = {"turn": lambda rewards, r_eog: [r + r_eog for r in rewards] + [r_eog],
               "trajectory": lambda rewards, r_eog: rewards + [r_eog]}[level]
    return [
        (P1, outcome([], A_WIN), [(1 - P1, 0.0)]),
        ((1 - P1) * P2, outcome([C1], B2), [(-P1, 0.0), (0.0, 1 - P2)]),
        ((1 - P1) * (1 - P2), outcome([C1, C2], B3), [(-P1, 0.0), (0.0, -P2), (0.0, 0.0)]),
    ]


def expected_update(name: str, group: int = GROUP, **options) -> tuple[float, float]:
    """E[(1/n) Σ_i Σ_t A[i,t] ∇log π(a_it)] by exact enumeration of every group of ``group`` rollouts."""
    estimator = get_estimator(name)
    kinds = _trajectories(estimator.level)
    total = [0.0, 0.0]
    for draw in itertools.product(kinds, repeat=group):
        rewards = torch.zeros(group, 3, dtype=torch.float64)
        mask = torch.zeros(group, 3, dtype=torch.bool)
        for i, (_, r, _) in enumerate(draw):
            rewards[i, : len(r)] = torch.tensor(r, dtype=torch.float64)
            mask[i, : len(r)] = True
        adv = estimator(rewards, mask, torch.zeros(group, dtype=torch.long), **options)
        weight = math.prod(p for p, _, _ in draw) / group
        for i, (_, _, scores) in enumerate(draw):
            for t, score in enumerate(scores):
                total[0] += weight * float(adv[i, t]) * score[0]
                total[1] += weight * float(adv[i, t]) * score[1]
    return total[0], total[1]


def true_gradient() -> tuple[float, float]:
    v2 = C1 + P2 * B2 + (1 - P2) * (C2 + B3)
    return P1 * (1 - P1) * (A_WIN - v2), (1 - P1) * P2 * (1 - P2) * (B2 - C2 - B3)


def test_toy_policy_gradient_by_hand():
    assert true_gradient() == pytest.approx((-0.05, -0.075))


def test_turn_rloo_expected_update_is_the_policy_gradient():
    assert expected_update("turn_rloo") == pytest.approx(true_gradient(), abs=1e-12)
    assert expected_update("turn_rloo", group=2) == pytest.approx(true_gradient(), abs=1e-12)


def test_turn_grpo_expected_update_is_biased_toward_stopping():
    # Without std: the group mean holds rollout i itself (factor 1 − 1/n), and turn 1 is credited
    # with its own reward C1 + r_eog only, so the decision to ask again misses the later belief
    # reward (1 − p2)·C2: dθ1 = (1 − 1/n)·p1(1 − p1)·(A_WIN − C1 − p2·B2 − (1 − p2)·B3).
    shrink = 1 - 1 / GROUP
    by_hand = (shrink * P1 * (1 - P1) * (A_WIN - C1 - P2 * B2 - (1 - P2) * B3),
               shrink * (1 - P1) * P2 * (1 - P2) * (B2 - C2 - B3))
    got = expected_update("turn_grpo", norm_by_std=False, include_finished=True)
    assert got == pytest.approx(by_hand, abs=1e-12)
    assert got == pytest.approx((0.01875, -0.05625), abs=1e-12)
    assert got[0] > 0 > true_gradient()[0]  # it pushes toward stopping; asking again is better
    # The reference settings (std normalisation, finished rollouts as 0) keep the wrong sign.
    assert expected_update("turn_grpo", norm_by_std=True, include_finished=True)[0] > 0
    assert expected_update("turn_grpo", norm_by_std=True, include_finished=False)[0] > 0


def test_verl_runs_turn_rloo_on_per_turn_token_rewards():
    pytest.importorskip("verl")
    from verl.trainer.ppo.core_algos import get_adv_estimator_fn

    import deltabelief.integrations.verl.estimator  # noqa: F401  (registers delta_belief_*)

    # Two turns of two tokens for rows 0 and 2, one turn for row 1; r_t on each turn's last token.
    response = torch.tensor([[1, 1, 0, 1, 1], [1, 1, 0, 0, 0], [1, 1, 0, 1, 1]], dtype=torch.float32)
    token_rewards = torch.zeros(3, 5)
    token_rewards[0, 1], token_rewards[0, 4] = 1.0, 2.0
    token_rewards[1, 1] = 3.0
    token_rewards[2, 1], token_rewards[2, 4] = 5.0, 4.0
    adv, _ = get_adv_estimator_fn("delta_belief_turn_rloo")(
        token_level_rewards=token_rewards, response_mask=response, index=["a", "a", "a"], config=None)
    # the rows of group 7 in test_turn_rloo_by_hand: turn advantages [[-3, -2], [-3], [6, 2]]
    expected = torch.tensor([[-3.0, -3.0, 0.0, -2.0, -2.0], [-3.0, -3.0, 0.0, 0.0, 0.0], [6.0, 6.0, 0.0, 2.0, 2.0]])
    assert torch.equal(adv, expected)
