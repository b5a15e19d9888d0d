"""Evaluation metrics and budget truncation against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from deltabelief.evaluation.metrics import (
    belief_curves,
    game_summary,
    mean_at_k,
    pass_at_k,
    per_target_table,
    success_matrix,
    summarize,
)
from deltabelief.evaluation.scaling import RESULT_COLUMNS, play_budgets, results_frame, truncate

# Three targets, four samples each.
SUCCESSES = np.array(
    [
        [1, 0, 0, 1],  # c = 2
        [0, 0, 0, 0],  # c = 0
        [1, 1, 1, 1],  # c = 4
    ]
)


def test_pass_at_k_hand_computed():
    # pass@k = mean_i 1 - C(n - c_i, k) / C(n, k), n = 4.
    # c = 2: k=1: 1 - 2/4 = 1/2; k=2: 1 - 1/6 = 5/6; k=3: 1 - 0/4 = 1; k=4: 1.
    # c = 0: 0 for every k.   c = 4: 1 for every k.
    expected = [(0.5 + 0 + 1) / 3, (5 / 6 + 0 + 1) / 3, (1 + 0 + 1) / 3, (1 + 0 + 1) / 3]
    assert pass_at_k(SUCCESSES) == pytest.approx(expected)
    assert pass_at_k(SUCCESSES)[1] == pytest.approx(11 / 18)


def test_pass_at_1_is_the_mean_success_and_single_sample_works():
    assert pass_at_k(SUCCESSES)[0] == pytest.approx(SUCCESSES.mean())
    assert pass_at_k(np.array([[1], [0], [0], [1]])) == pytest.approx([0.5])
    assert pass_at_k(np.array([[True, False]])) == pytest.approx([0.5, 1.0])


def test_mean_at_k_is_mean_and_population_std_across_repeats():
    # Per-repeat success rates (columns): 2/3, 1/3, 1/3, 2/3 -> mean 1/2;
    # deviations are all ±1/6, so the population std is 1/6.
    mean, std = mean_at_k(SUCCESSES)
    assert mean == pytest.approx(0.5)
    assert std == pytest.approx(1 / 6)
    # All repeats equal -> zero spread.
    assert mean_at_k(np.array([[1, 1], [0, 0]])) == pytest.approx((0.5, 0.0))


@pytest.mark.parametrize("bad", [np.array([1, 0, 1]), np.zeros((0, 3)), np.array([[0, 2]])])
def test_metrics_reject_malformed_matrices(bad):
    with pytest.raises(ValueError):
        pass_at_k(bad)
    with pytest.raises(ValueError):
        mean_at_k(bad)


def test_truncate_reads_a_game_at_smaller_budgets():
    statuses = ["no", "invalid", "yes", "repeated", "finished"]
    at3 = truncate(statuses, solved=True, budget=3)
    assert (at3.num_turns, at3.solved, at3.last_status) == (3, False, "yes")
    assert (at3.invalid_turns, at3.repeated_turns, at3.unanswerable_turns) == (1, 0, 0)
    at5 = truncate(statuses, solved=True, budget=5)
    assert (at5.num_turns, at5.solved, at5.last_status, at5.repeated_turns) == (5, True, "finished", 1)
    assert truncate(statuses, solved=True, budget=50) == at5
    unsolved = truncate(["no", "unanswerable", "no", "no"], solved=False, budget=2)
    assert (unsolved.num_turns, unsolved.solved, unsolved.unanswerable_turns) == (2, False, 1)
    with pytest.raises(ValueError):
        truncate(statuses, solved=True, budget=0)


def test_play_budgets_plays_once_unless_replaying():
    calls = []

    def play(budget):
        calls.append(budget)
        return [f"games@{budget}"]

    assert play_budgets(play, [20, 10, 20]) == {10: ["games@20"], 20: ["games@20"]}
    assert calls == [20]
    calls.clear()
    assert play_budgets(play, [10, 20], replay=True) == {10: ["games@10"], 20: ["games@20"]}
    assert calls == [10, 20]
    with pytest.raises(ValueError):
        play_budgets(play, [0, 5])


def _row(target_id, sample, solved, num_turns, invalid=0, repeated=0, rating=math.nan, budget=10, suite="s"):
    return {"suite": suite, "target_id": target_id, "target": target_id.upper(), "sample": sample,
            "budget": budget, "num_turns": num_turns, "max_turns": budget, "solved": solved,
            "last_status": "finished" if solved else "no", "invalid_turns": invalid,
            "repeated_turns": repeated, "unanswerable_turns": 0, "rating": rating}


def test_game_summary_and_per_target_table():
    frame = results_frame([
        _row("a", 0, True, 4, invalid=1), _row("a", 1, False, 10, repeated=2),
        _row("b", 0, False, 10, invalid=3), _row("b", 1, True, 6),
    ])
    assert list(frame.columns) == list(RESULT_COLUMNS)
    ids, matrix = success_matrix(frame)
    assert ids == ["a", "b"] and matrix.tolist() == [[1, 0], [0, 1]]
    summary = game_summary(frame)
    # Repeat rates 1/2 and 1/2 -> 0.5 ± 0; pass@2: both targets solved at least once -> 1.
    assert summary["success_mean"] == pytest.approx(0.5) and summary["success_std"] == pytest.approx(0.0)
    assert summary["pass@1"] == pytest.approx(0.5) and summary["pass@2"] == pytest.approx(1.0)
    assert summary["turns_mean"] == pytest.approx(30 / 4)
    assert summary["turns_solved_mean"] == pytest.approx(5.0)
    # 4 invalid and 2 repeated turns out of 30 turns played.
    assert summary["invalid_rate"] == pytest.approx(4 / 30)
    assert summary["repeated_rate"] == pytest.approx(2 / 30)
    table = per_target_table(frame)
    assert table["target_id"].tolist() == ["a", "b"]
    assert table["success_rate"].tolist() == [0.5, 0.5]
    assert table["invalid_turns"].tolist() == [1, 3]
    assert table["turns_mean"].tolist() == [7.0, 8.0]


def test_success_matrix_names_a_target_missing_samples():
    frame = results_frame([_row("a", 0, True, 1), _row("a", 1, True, 1), _row("b", 0, False, 3)])
    with pytest.raises(ValueError, match="'b'"):
        success_matrix(frame)


def test_summarize_rated_suite_reports_ratings_not_success():
    frame = results_frame([
        _row("p", 0, False, 1, rating=4.0, budget=1, suite="personalization"),
        _row("p", 1, False, 1, rating=math.nan, budget=1, suite="personalization"),
        _row("p", 0, False, 2, rating=6.0, budget=2, suite="personalization"),
        _row("p", 1, False, 2, rating=8.0, budget=2, suite="personalization"),
    ])
    summary = summarize(frame, {"personalization"}).set_index("budget")
    assert summary.loc[1, "rating_mean"] == pytest.approx(4.0) and summary.loc[1, "rating_missing"] == 1
    assert summary.loc[2, "rating_mean"] == pytest.approx(7.0) and summary.loc[2, "rating_std"] == pytest.approx(1.0)
    assert math.isnan(summary.loc[2, "success_mean"]) and math.isnan(summary.loc[2, "pass@k"])


def test_belief_curves_split_by_outcome_over_games_that_reached_each_turn():
    curves = belief_curves(
        [np.array([0.0, -1.0, -2.0]), np.array([0.0, -3.0]), np.array([-1.0, -1.0, -1.0, -1.0])],
        [True, True, False],
    )
    solved = curves[curves["outcome"] == "solved"].set_index("turn")
    # turn 1: mean(-1, -3) = -2, population std 1; turn 2: only the first game is still going.
    assert solved.loc[0, "mean"] == 0.0 and solved.loc[0, "count"] == 2
    assert solved.loc[1, "mean"] == pytest.approx(-2.0) and solved.loc[1, "std"] == pytest.approx(1.0)
    assert solved.loc[2, "mean"] == pytest.approx(-2.0) and solved.loc[2, "count"] == 1
    unsolved = curves[curves["outcome"] == "unsolved"]
    assert unsolved["turn"].tolist() == [0, 1, 2, 3] and (unsolved["mean"] == -1.0).all()
    assert isinstance(curves, pd.DataFrame)
