"""Per-turn rewards against hand-computed values (λ = 0.1, win 2.0, r_p 0.05, pen −5/−1/−5)."""

from __future__ import annotations

import pytest
import torch

from deltabelief.config import RewardConfig
from deltabelief.rewards import (
    STATUS_CODES,
    reward_components,
    status_codes,
    step_rewards,
    trajectory_score,
    turn_rewards,
)

# Three rollouts, at most three turns.
# row 0: solved on turn 3; row 1: gave up after 2 turns (invalid, repeated); row 2: 3 turns unsolved.
DELTA = torch.tensor([[0.5, -0.3, 2.0], [1.0, 0.2, 9.0], [0.0, 0.4, -1.0]])
STATUSES = [["yes", "no", "finished"], ["invalid", "repeated"], ["unanswerable", "answered", "yes"]]
MASK = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 1, 1]], dtype=torch.bool)
SOLVED = [True, False, False]


def test_every_turn_by_hand():
    r = turn_rewards(DELTA, STATUSES, MASK, SOLVED, outcome_on="every_turn")
    # row 0: r_eog = 2.0·1 − 0.05·3 = 1.85
    #   t1: 1.85 + 0.1·0.5 = 1.90; t2: 1.85 + 0.1·max(−0.3, 0) = 1.85; t3 wins: no belief term -> 1.85
    # row 1: r_eog = 0 − 0.05·2 = −0.10
    #   t1: −0.10 + 0.1·1.0 − 5 = −5.00; t2: −0.10 + 0.1·0.2 − 1 = −1.08; t3 not played -> 0 (its 9.0 ignored)
    # row 2: r_eog = −0.15
    #   t1: −0.15 + 0 − 5 = −5.15; t2: −0.15 + 0.04 = −0.11; t3: −0.15 + 0.1·max(−1, 0) = −0.15
    expected = torch.tensor([[1.90, 1.85, 1.85], [-5.00, -1.08, 0.0], [-5.15, -0.11, -0.15]])
    assert torch.allclose(r, expected, atol=1e-6)


def test_last_turn_by_hand():
    r = turn_rewards(DELTA, STATUSES, MASK, SOLVED, outcome_on="last_turn")
    # r_eog only on each row's last played turn (t3, t2, t3)
    expected = torch.tensor([[0.05, 0.0, 1.85], [-4.90, -1.0 + 0.02 - 0.10, 0.0], [-5.0, 0.04, -0.15]])
    assert torch.allclose(r, expected, atol=1e-6)
    # trajectory score = r_eog + Σ belief + Σ pen: row 0 1.85 + 0.05, row 1 −0.1 + 0.12 − 6, row 2 −0.15 + 0.04 − 5
    assert torch.allclose(trajectory_score(r, MASK), torch.tensor([1.90, -5.98, -5.11]), atol=1e-6)


def test_without_clipping_negative_belief_counts():
    r = turn_rewards(DELTA, STATUSES, MASK, SOLVED, clip_negative_belief=False)
    # row 0 t2: 1.85 + 0.1·(−0.3) = 1.82; row 2 t3: −0.15 + 0.1·(−1.0) = −0.25; winning turn still has none
    assert r[0].tolist() == pytest.approx([1.90, 1.82, 1.85], abs=1e-6)
    assert r[2, 2].item() == pytest.approx(-0.25, abs=1e-6)


def test_components_and_custom_weights():
    parts = reward_components(DELTA, STATUSES, MASK, SOLVED, belief_reward_weight=1.0, win_reward=1.0,
                              turn_penalty=0.0, invalid_penalty=-2.0, repeated_penalty=-0.5,
                              unanswerable_penalty=-3.0)
    assert parts.outcome.tolist() == [[1.0] * 3, [0.0] * 3, [0.0] * 3]
    assert torch.allclose(parts.belief, torch.tensor([[0.5, 0.0, 0.0], [1.0, 0.2, 0.0], [0.0, 0.4, 0.0]]))
    assert parts.penalty.tolist() == [[0.0] * 3, [-2.0, -0.5, 0.0], [-3.0, 0.0, 0.0]]
    assert torch.equal(parts.total(), parts.outcome + parts.belief + parts.penalty)


def test_code_tensor_equals_string_statuses():
    codes = status_codes(STATUSES, 3)
    assert codes[1].tolist() == [STATUS_CODES["invalid"], STATUS_CODES["repeated"], -1]
    assert torch.equal(turn_rewards(DELTA, codes, MASK, SOLVED), turn_rewards(DELTA, STATUSES, MASK, SOLVED))


def test_no_turns_and_single_turn_win():
    # a rollout that won on its first turn: r_1 = 2 − 0.05 = 1.95, no belief term even with ΔBelief 3
    r = turn_rewards(torch.tensor([[3.0, 0.0], [0.0, 0.0]]), [["finished"], []],
                     torch.tensor([[1, 0], [0, 0]], dtype=torch.bool), torch.tensor([True, False]))
    assert torch.allclose(r, torch.tensor([[1.95, 0.0], [0.0, 0.0]]))


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match="unknown status 'maybe'"):
        turn_rewards(DELTA, [["yes", "maybe", "no"], ["yes"], ["no"]], MASK, SOLVED)
    with pytest.raises(ValueError, match="gap"):
        turn_rewards(DELTA, STATUSES, torch.tensor([[1, 0, 1]] * 3, dtype=torch.bool), SOLVED)
    with pytest.raises(ValueError, match="outcome_on"):
        turn_rewards(DELTA, STATUSES, MASK, SOLVED, outcome_on="first_turn")
    with pytest.raises(ValueError, match="differ"):
        turn_rewards(DELTA[:, :2], STATUSES, MASK, SOLVED)


@pytest.mark.parametrize("level, outcome_on", [("turn", "every_turn"), ("trajectory", "last_turn")])
def test_step_rewards_places_r_eog_by_the_estimators_level(level, outcome_on):
    parts = step_rewards(DELTA, STATUSES, MASK, SOLVED, reward=RewardConfig(), unanswerable_as_invalid=False,
                         estimator_level=level)
    assert torch.allclose(parts.total(), turn_rewards(DELTA, STATUSES, MASK, SOLVED, outcome_on=outcome_on))


def test_step_rewards_charges_unanswerable_as_invalid_only_when_told():
    reward = RewardConfig(invalid_penalty=-5.0, unanswerable_penalty=-0.5)
    as_invalid = step_rewards(DELTA, STATUSES, MASK, SOLVED, reward=reward, unanswerable_as_invalid=True,
                              estimator_level="turn").penalty
    own = step_rewards(DELTA, STATUSES, MASK, SOLVED, reward=reward, unanswerable_as_invalid=False,
                       estimator_level="turn").penalty
    assert as_invalid[2, 0].item() == -5.0 and own[2, 0].item() == -0.5  # row 2, turn 1 is 'unanswerable'
    assert torch.equal(as_invalid[:2], own[:2])  # nothing else changes
    with pytest.raises(ValueError, match="estimator_level"):
        step_rewards(DELTA, STATUSES, MASK, SOLVED, reward=reward, unanswerable_as_invalid=True, estimator_level="x")
