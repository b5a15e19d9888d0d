"""Advantage estimators: hand-computed values, registry rules, loop == vectorised."""

from __future__ import annotations

import dataclasses
import math
import random

import pytest
import torch

from deltabelief import advantages
from deltabelief.advantages import (
    get_estimator,
    gigpo,
    grpo,
    register_estimator,
    rloo,
    to_token_level,
    turn_grpo,
)
from deltabelief.config import EstimatorConfig
from estimator_oracles import _gigpo_loop, _grpo_loop, _rloo_loop, _to_token_level_loop, _turn_grpo_loop

EPS = 1e-6
# Group 7: three rollouts; rollout 1 finished after one turn (its 100.0 must be ignored).
# Group 3: one rollout. Group 5: two identical rollouts (zero variance).
R = torch.tensor([[1.0, 2.0], [3.0, 100.0], [5.0, 4.0], [7.0, -1.0], [0.1, 0.3], [0.1, 0.3]])
MASK = torch.tensor([[1, 1], [1, 0], [1, 1], [1, 1], [1, 1], [1, 1]], dtype=torch.bool)
GROUPS = torch.tensor([7, 7, 7, 3, 5, 5])


def test_turn_grpo_include_finished_by_hand():
    a = turn_grpo(R, MASK, GROUPS, include_finished=True)
    # group 7, t=1: [1, 3, 5], mean 3, unbiased std sqrt((4 + 0 + 4) / 2) = 2 -> [-1, 0, 1]
    # group 7, t=2: finished rollout counts as 0: [2, 0, 4], mean 2, std sqrt((0 + 4 + 4) / 2) = 2
    #   -> [0, (masked), 1]
    # group 3: one member -> mean 0, std 1 -> R / (1 + eps)
    # group 5: zero variance -> exactly 0
    expected = torch.tensor([[-1.0, 0.0], [0.0, 0.0], [1.0, 1.0], [7.0, -1.0], [0.0, 0.0], [0.0, 0.0]])
    assert torch.allclose(a, expected, atol=1e-5)
    assert (a[4:] == 0).all()


def test_turn_grpo_only_playing_by_hand():
    a = turn_grpo(R, MASK, GROUPS, include_finished=False)
    # group 7, t=2: only rollouts 0 and 2 still play: [2, 4], mean 3, std sqrt(2) -> [-1/√2, +1/√2]
    s = 1 / math.sqrt(2)
    assert torch.allclose(a[[0, 2], 1], torch.tensor([-s, s]), atol=1e-5)
    assert torch.allclose(a[:, 0], torch.tensor([-1.0, 0.0, 1.0, 7.0, 0.0, 0.0]), atol=1e-5)  # t=1 unchanged
    assert a[1, 1] == 0


def test_turn_grpo_without_std():
    a = turn_grpo(R, MASK, GROUPS, norm_by_std=False)
    # group 7, t=1: [1, 3, 5] − 3; t=2: [2, 0, 4] − 2; group 3: R − 0
    assert torch.allclose(a[:4], torch.tensor([[-2.0, 0.0], [0.0, 0.0], [2.0, 2.0], [7.0, -1.0]]))


def test_grpo_by_hand():
    a = grpo(R, MASK, GROUPS)
    # scores: group 7 [3, 3, 9] (100 not played), mean 5, std sqrt((4 + 4 + 16) / 2) = sqrt(12)
    # group 3 [6] -> 6 / (1 + eps); group 5 [0.4, 0.4] -> 0
    r12 = math.sqrt(12)
    expected = torch.tensor([[-2 / r12] * 2, [-2 / r12, 0.0], [4 / r12] * 2, [6.0] * 2, [0.0] * 2, [0.0] * 2])
    assert torch.allclose(a, expected, atol=1e-5)


def test_rloo_by_hand():
    a = rloo(R, MASK, GROUPS)
    # group 7 scores [3, 3, 9]: baselines (3+9)/2 = 6, 6, (3+3)/2 = 3 -> [-3, -3, 6]
    # group 3 (one member): baseline 0 -> 6; group 5: 0.4 − 0.4 = 0
    expected = torch.tensor([[-3.0, -3.0], [-3.0, 0.0], [6.0, 6.0], [6.0, 6.0], [0.0, 0.0], [0.0, 0.0]])
    assert torch.allclose(a, expected, atol=1e-5)


def test_gigpo_by_hand():
    rewards = torch.tensor([[1.0, 2.0], [3.0, 0.0], [5.0, 9.0]])
    mask = torch.tensor([[1, 1], [1, 1], [1, 0]], dtype=torch.bool)
    states = [["s0", "a"], ["s0", "b"], ["s0"]]  # rollout 2 is in another group: its "s0" is its own
    a = gigpo(rewards, mask, [0, 0, 1], gigpo_gamma=0.5, gigpo_omega=1.0, step_states=states)
    # episode: group 0 scores [3, 3] -> 0, 0; group 1 [5] -> 5 / (1 + eps)
    # returns (γ = 0.5): rollout 0 [1 + 0.5·2, 2] = [2, 2]; rollout 1 [3 + 0, 0] = [3, 0]
    # step group (0, "s0") = {2, 3}: mean 2.5, std sqrt(0.5) -> [-0.7071, +0.7071]
    # ("a"), ("b") and (1, "s0") are singletons -> 0
    s = 0.5 / math.sqrt(0.5)
    expected = torch.tensor([[-s, 0.0], [s, 0.0], [5.0, 0.0]])
    assert torch.allclose(a, expected, atol=1e-5)
    a2 = gigpo(rewards, mask, [0, 0, 1], gigpo_gamma=0.5, gigpo_omega=2.0, step_states=states)
    assert torch.allclose(a2[:2, 0], 2 * expected[:2, 0], atol=1e-5)
    with pytest.raises(ValueError, match="step_states"):
        gigpo(rewards, mask, [0, 0, 1])


def test_to_token_level_runs():
    adv = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    response = torch.tensor([[0, 1, 1, 0, 0, 1, 0, 1, 1], [1, 1, 0, 1, 0, 0, 0, 0, 0]])
    out = to_token_level(adv, response)
    assert out.tolist() == [[0, 1, 1, 0, 0, 2, 0, 3, 3], [4, 4, 0, 5, 0, 0, 0, 0, 0]]
    with pytest.raises(ValueError, match="row 0: response_mask has 3 runs"):
        to_token_level(adv, response, turn_mask=torch.tensor([[1, 1, 0], [1, 1, 0]], dtype=torch.bool))
    with pytest.raises(ValueError, match="4 runs"):
        to_token_level(adv, torch.tensor([[1, 0, 1, 0, 1, 0, 1], [0] * 7]))


def test_registry_levels_options_and_errors(monkeypatch):
    assert advantages.estimator_names() == ["gigpo", "grpo", "rloo", "turn_grpo", "turn_rloo"]
    assert get_estimator("turn_grpo").level == "turn"
    assert {get_estimator(n).level for n in ("grpo", "rloo", "gigpo")} == {"trajectory"}
    fields = {f.name for f in dataclasses.fields(EstimatorConfig)}
    for name in advantages.estimator_names():
        assert set(get_estimator(name).options) <= fields, name  # options are config field names
    valid = r"\['gigpo', 'grpo', 'rloo', 'turn_grpo', 'turn_rloo'\]"
    with pytest.raises(KeyError, match=r"unknown estimator 'ppo'; estimators: " + valid):
        get_estimator("ppo")
    monkeypatch.setattr(advantages, "_ESTIMATORS", dict(advantages._ESTIMATORS))
    with pytest.raises(ValueError, match="already registered"):
        register_estimator("grpo", level="trajectory")(lambda r, m, g, *, step_states=None: r)
    with pytest.raises(ValueError, match="level"):
        register_estimator("new_one", level="token")


def test_every_estimator_runs_through_registry_with_config_options():
    config = EstimatorConfig()
    states = [[(i % 2, t) for t in range(2)] for i in range(len(GROUPS))]
    for name in advantages.estimator_names():
        est = get_estimator(name)
        a = est(R, MASK, GROUPS, step_states=states, **{k: getattr(config, k) for k in est.options})
        assert a.shape == R.shape and a[1, 1] == 0 and torch.isfinite(a).all(), name


def _random_case(seed: int):
    gen = random.Random(seed)
    batch, turns = gen.randint(1, 12), gen.randint(1, 7)
    groups = torch.tensor([gen.randint(0, 3) for _ in range(batch)])
    lengths = [gen.randint(0, turns) for _ in range(batch)]
    mask = torch.tensor([[t < n for t in range(turns)] for n in lengths])
    # few distinct values, so ties and zero-variance groups occur
    rewards = torch.tensor([[gen.choice([-1.0, 0.0, 0.5, 2.0, gen.gauss(0, 1)]) for _ in range(turns)]
                            for _ in range(batch)])
    states = [[gen.randint(0, 2) for _ in range(n)] for n in lengths]
    return rewards, mask, groups, states


@pytest.mark.parametrize("seed", range(25))
def test_vectorised_equals_loop(seed):
    rewards, mask, groups, states = _random_case(seed)
    for include_finished in (True, False):
        for norm in (True, False):
            options = {"include_finished": include_finished, "norm_by_std": norm}
            assert torch.allclose(turn_grpo(rewards, mask, groups, **options),
                                  _turn_grpo_loop(rewards, mask, groups, **options), atol=1e-5)
    assert torch.allclose(grpo(rewards, mask, groups), _grpo_loop(rewards, mask, groups), atol=1e-5)
    assert torch.allclose(rloo(rewards, mask, groups), _rloo_loop(rewards, mask, groups), atol=1e-5)
    assert torch.allclose(gigpo(rewards, mask, groups, step_states=states),
                          _gigpo_loop(rewards, mask, groups, step_states=states), atol=1e-5)
    response = torch.tensor([[random.Random(seed + i).random() < 0.5 for _ in range(20)] for i in range(4)])
    runs = int(max((r & ~torch.cat([torch.tensor([False]), r[:-1]])).sum() for r in response))
    adv = torch.randn(4, max(runs, 1), generator=torch.Generator().manual_seed(seed))
    assert torch.equal(to_token_level(adv, response), _to_token_level_loop(adv, response))


@pytest.mark.parametrize("name", ["turn_grpo", "grpo", "rloo"])
def test_group_ids_may_be_any_hashable_values(name):
    gen = torch.Generator().manual_seed(0)
    rewards = torch.randn(6, 3, generator=gen)
    mask = torch.ones(6, 3, dtype=torch.bool)
    numbers = torch.tensor([0, 0, 1, 1, 1, 0])
    uids = ["c3f1", "c3f1", "9ab0", "9ab0", "9ab0", "c3f1"]  # verl's uids are strings
    estimator = get_estimator(name)
    torch.testing.assert_close(estimator(rewards, mask, uids), estimator(rewards, mask, numbers))
    with pytest.raises(ValueError, match="5 group ids for 6 rollouts"):
        estimator(rewards, mask, uids[:5])
