"""Data contracts: each clean dataset passes; each planted fault is rejected by its named rule."""

from __future__ import annotations

import copy
import json
import math

import pandas as pd
import pytest

from anchor import REFERENCE_DATA
from deltabelief.config import DataConfig, GameConfig
from deltabelief.data.contracts import (
    DERIVED,
    KINDS,
    ContractError,
    check_frame,
    format_report,
    load_suite,
    report_path_for,
    validate_dataset,
)
from deltabelief.data.knowledge_base import load_kb
from deltabelief.synthesis import game_messages, synthesize
from deltabelief.types import STATUSES


@pytest.fixture(scope="module")
def synthesized(tmp_path_factory):
    """Targets and noisy-teacher trajectories (repeats, unsolved games) over ten KB nouns."""
    out = tmp_path_factory.mktemp("synth")
    nouns = load_kb().nouns[:10]
    data = DataConfig(source="kb", teacher="noisy", noise_epsilon=0.4, num_games=16, seed=2)
    result = synthesize(data, GameConfig(kb_nouns=nouns, max_turns=20), out)
    return {
        "targets": pd.read_parquet(result.targets_path).to_dict(orient="records"),
        "trajectories": pd.read_parquet(result.trajectories_path).to_dict(orient="records"),
    }


def _eval_rows() -> list[dict]:
    rows = []
    for sample in range(2):
        for budget in (10, 20):
            for i, (target, solved) in enumerate([("dog", True), ("kettle", False)]):
                turns = 4 if solved else budget
                rows.append(
                    {
                        "suite": "twenty_questions", "target_id": f"twenty_questions-{i:05d}", "target": target,
                        "sample": sample, "budget": budget, "num_turns": turns, "max_turns": budget,
                        "solved": solved, "last_status": "finished" if solved else "no",
                        "invalid_turns": 1, "repeated_turns": 0, "unanswerable_turns": 0, "rating": math.nan,
                    }
                )
    return rows


def _long_game(row: dict, turns: int) -> dict:
    """A self-consistent unsolved game of ``turns`` turns (only its length breaks a 20-turn game)."""
    row = dict(row)
    moves = [f"Question number {i}?" for i in range(turns)]
    answers = ["No."] * turns
    row.update(
        moves=moves, answers=answers, statuses=["no"] * turns, num_turns=turns, solved=False,
        messages=game_messages(list(row["messages"])[:2], moves, answers), log_posterior=[0.0] * (turns + 1),
    )
    return row


def _solved_index(rows: list[dict]) -> int:
    return next(i for i, r in enumerate(rows) if r["solved"])


def _plant(kind: str, fault: str, rows: list[dict]) -> tuple[list[dict], str]:
    """Apply one fault; returns the rows and the id of the offending row as it appears in the report."""
    rows = copy.deepcopy(rows)
    key = "target_id" if kind == "eval" else "id"
    if fault == "duplicate id":
        if kind == "eval":
            rows[1].update({k: rows[0][k] for k in ("suite", "target_id", "sample", "budget")})
        else:
            rows[1]["id"] = rows[0]["id"]
        return rows, rows[0][key]
    if fault == "target in two splits":
        twin = dict(rows[0], id=rows[0]["id"] + "-twin")
        twin["split"] = "test" if rows[0]["split"] != "test" else "train"
        return rows + [twin], rows[0]["id"]  # the first row holding the target is listed first
    if fault == "empty target":
        rows[0]["target"] = ""
        return rows, rows[0][key]
    if fault == "target of 2001 characters":
        rows[0]["target"] = "a" * 2001
        return rows, rows[0][key]
    if fault == "status 'maybe'":
        if kind == "eval":
            rows[1]["last_status"] = "maybe"
        else:
            rows[0]["statuses"] = ["maybe"] + list(rows[0]["statuses"])[1:]
        return rows, rows[1 if kind == "eval" else 0][key]
    if fault == "25 turns in a 20-turn game":
        if kind == "eval":
            rows[3].update(num_turns=25)  # budget 20, unsolved
            return rows, rows[3][key]
        rows[0] = _long_game(rows[0], 25)
        return rows, rows[0][key]
    if fault == "success contradicts last status":
        i = _solved_index(rows)
        rows[i]["solved"] = False
        return rows, rows[i][key]
    if fault == "roles do not alternate":
        rows[0]["messages"] = list(rows[0]["messages"]) + [{"role": "user", "content": "again"}]
        return rows, rows[0][key]
    raise ValueError(fault)


FAULTS = [
    ("targets", "duplicate id", "unique ids"),
    ("targets", "target in two splits", "disjoint splits"),
    ("targets", "empty target", "non-empty target"),
    ("targets", "target of 2001 characters", "target at most 2000 characters"),
    ("targets", "roles do not alternate", "roles alternate"),
    ("trajectories", "duplicate id", "unique ids"),
    ("trajectories", "target in two splits", "disjoint splits"),
    ("trajectories", "empty target", "non-empty target"),
    ("trajectories", "status 'maybe'", "statuses in the label set"),
    ("trajectories", "25 turns in a 20-turn game", "turns within max_turns"),
    ("trajectories", "success contradicts last status", "solved matches last status"),
    ("eval", "duplicate id", "unique ids"),
    ("eval", "empty target", "non-empty target"),
    ("eval", "status 'maybe'", "statuses in the label set"),
    ("eval", "25 turns in a 20-turn game", "turns within max_turns"),
    ("eval", "success contradicts last status", "solved matches last status"),
]


def _clean(kind: str, synthesized) -> list[dict]:
    return _eval_rows() if kind == "eval" else synthesized[kind]


@pytest.mark.parametrize("kind", KINDS)
def test_clean_dataset_passes_and_the_report_is_saved(kind, synthesized, tmp_path):
    path = tmp_path / f"{kind}.parquet"
    pd.DataFrame(_clean(kind, synthesized)).to_parquet(path, index=False)
    frame = validate_dataset(kind, path)
    assert len(frame) == len(_clean(kind, synthesized))
    saved = json.loads(report_path_for(path).read_text())
    assert report_path_for(path).name == f"{kind}.validation.json"
    assert saved["success"] is True and saved["num_failed"] == 0
    line = format_report(saved)
    assert "\n" not in line and line.startswith(f"{kind} contract holds")


@pytest.mark.parametrize("kind, fault, rule", FAULTS)
def test_planted_fault_is_rejected_by_name(kind, fault, rule, synthesized, tmp_path):
    rows, offender = _plant(kind, fault, _clean(kind, synthesized))
    path = tmp_path / f"{kind}.parquet"
    pd.DataFrame(rows).to_parquet(path, index=False)
    with pytest.raises(ContractError) as err:
        validate_dataset(kind, path)
    report = err.value.report
    assert report["failed_rules"] == [rule]  # exactly the planted fault, nothing else
    message = str(err.value)
    assert f"[{rule}]" in message and repr(offender) in message
    saved = json.loads(report_path_for(path).read_text())
    assert saved["success"] is False and saved["failed_rules"] == [rule]


def test_at_most_five_offending_rows_are_listed(synthesized):
    rows = copy.deepcopy(synthesized["targets"])
    for row in rows[:7]:
        row["split"] = "holdout"
    report = check_frame("targets", pd.DataFrame(rows))
    (entry,) = [r for r in report["results"] if not r["success"]]
    assert entry["rule"] == "split is train/val/test" and entry["unexpected_count"] == 7
    assert [e["id"] for e in entry["examples"]] == [r["id"] for r in rows[:5]]
    assert format_report(report).count("split='holdout'") == 5


def test_missing_column_names_the_schema_rule(synthesized):
    frame = pd.DataFrame(synthesized["targets"]).drop(columns=["extra"])
    with pytest.raises(ContractError, match=r"\[schema: columns\]") as err:
        from deltabelief.data.contracts import validate_frame

        validate_frame("targets", frame)
    assert "column(s) ['extra'] missing from the data" in str(err.value)
    json.dumps(err.value.report)  # the report is JSON-able


def test_suites_are_declarative_and_resolve_statuses():
    for kind in KINDS:
        suite = load_suite(kind)
        assert all(spec["function"] in DERIVED for spec in suite["derived_columns"])
        assert all(e["type"].startswith("expect_") for e in suite["expectations"])
    (rule,) = [e for e in load_suite("eval")["expectations"] if e["rule"] == "statuses in the label set"]
    assert rule["kwargs"]["value_set"] == list(STATUSES)
    with pytest.raises(KeyError, match="unknown dataset kind 'rollouts'"):
        load_suite("rollouts")


@pytest.mark.parametrize("source", ["reference:twenty_questions", "reference:murder_mystery/test.parquet", "paprika"])
def test_targets_from_outside_sources_hold_the_contract(source, tmp_path):
    from pathlib import Path

    anchor = REFERENCE_DATA
    data_dir = Path(__file__).parent / "data"
    kind, _, rest = source.partition(":")
    full = f"paprika:{data_dir / 'paprika_small.json'}" if kind == "paprika" else f"reference:{anchor / rest}"
    result = synthesize(DataConfig(source=full, teacher="none"), GameConfig(), tmp_path)
    frame = validate_dataset("targets", result.targets_path)
    assert len(frame) == result.report["num_targets"]
