"""The figures `make curves` reports: a t-interval over seeds and a success gain paired over targets."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pandas as pd
import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "experiments" / "compare_estimators.py"


@pytest.fixture(scope="module")
def compare():
    spec = importlib.util.spec_from_file_location("compare_estimators", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_seed_interval_is_the_t_interval_of_the_mean(compare):
    mean, low, high = compare.seed_interval([0.5, 0.6, 0.7])
    half = 4.302653 * 0.1 / math.sqrt(3)  # t(0.975, 2 dof) × sd / sqrt(n)
    assert mean == pytest.approx(0.6)
    assert (low, high) == (pytest.approx(0.6 - half, abs=1e-6), pytest.approx(0.6 + half, abs=1e-6))
    assert compare.seed_interval([0.1, 0.3, 0.5], rate=True)[1] == 0.0  # a rate's interval stops at 0
    assert math.isnan(compare.seed_interval([0.4])[1])  # one seed has no interval


def _games(directory: Path, solved: dict[str, list[bool]], budget: int = 20) -> Path:
    directory.mkdir(parents=True)
    rows = [{"suite": "twenty_questions", "target_id": target, "target": target, "sample": i, "budget": budget,
             "num_turns": 5, "max_turns": budget, "solved": won, "last_status": "finished" if won else "no",
             "invalid_turns": 0, "repeated_turns": 0, "unanswerable_turns": 0, "rating": float("nan")}
            for target, games in solved.items() for i, won in enumerate(games)]  # the eval contract's columns
    rows += [{**row, "budget": budget + 10, "solved": True} for row in rows]  # another budget: ignored
    pd.DataFrame(rows).to_parquet(directory / "results.parquet")
    return directory


def test_paired_gain_averages_each_target_over_seeds_then_pairs_targets(compare, tmp_path):
    seed_a = _games(tmp_path / "a0", {"t1": [True, True], "t2": [False, False], "t3": [True, False]})
    seed_b = _games(tmp_path / "a1", {"t1": [True, False], "t2": [True, False], "t3": [True, True]})
    reference = _games(tmp_path / "ref", {"t1": [False, False], "t2": [False, False], "t3": [True, False]})
    # per target over both seeds: t1 0.75, t2 0.25, t3 0.75 against 0, 0, 0.5 -> differences 0.75, 0.25, 0.25
    gain, low, high = compare.paired_gain([seed_a, seed_b], [reference])
    assert gain == pytest.approx(1.25 / 3)
    assert 0.25 - 1e-9 <= low <= gain <= high <= 0.75 + 1e-9


def test_beliefs_table_reads_the_chosen_template_and_gives_each_preset_an_interval_over_seeds(compare):
    from deltabelief.calibration.report import CalibrationReport

    template = "The answer is {target}."

    def report(spearman, ece):
        return CalibrationReport(template, "spearman", {template: {"spearman": spearman, "ece": ece},
                                                        "Is it '{target}'?": {"spearman": -1.0, "ece": 1.0}})

    figures = [compare.belief_figures(report(s, 0.1), template) for s in (0.5, 0.6, 0.7)]
    assert figures[0] == {"spearman": 0.5, "ece": 0.1}  # the chosen template's, not another's
    table = compare.beliefs_table(figures[0], figures[2], {"cpu": figures}, template)
    half = 4.302653 * 0.1 / math.sqrt(3)  # t(0.975, 2 dof) × sd / sqrt(n), as in the held-out table
    assert "| base | 0.500 | 0.100 |" in table and "| warm start | 0.700 | 0.100 |" in table
    assert f"| cpu (3 seeds) | 0.600 [{0.6 - half:.3f}, {0.6 + half:.3f}] | 0.100 [0.100, 0.100] |" in table


def test_the_repeat_share_is_each_targets_repeated_turns_over_all_its_turns_paired_like_success(compare, tmp_path):
    def games(directory, repeated):  # two games of 5 turns per target, with these repeated turns
        frame = pd.read_parquet(_games(directory, {t: [False, False] for t in repeated}) / "results.parquet")
        frame["repeated_turns"] = [r for t in repeated for r in repeated[t]] * 2  # both budgets
        frame.to_parquet(directory / "results.parquet")
        return directory

    run = games(tmp_path / "run", {"t1": [0, 1], "t2": [0, 0]})
    reference = games(tmp_path / "ref", {"t1": [2, 3], "t2": [1, 1]})
    # t1: 1/10 against 5/10, t2: 0/10 against 2/10 -> differences −0.4 and −0.2
    gain, low, high = compare.paired_gain([run], [reference], compare.repeat_share_per_target)
    assert gain == pytest.approx(-0.3)
    assert -0.4 - 1e-9 <= low <= gain <= high <= -0.2 + 1e-9
