"""Targets and teacher trajectories written by ``synthesize``: splits, duplicates, schemas."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from anchor import REFERENCE_DATA
from deltabelief.config import DataConfig, GameConfig
from deltabelief.data.knowledge_base import load_kb
from deltabelief.data.loaders import SourceRecord
from deltabelief.data.targets import (
    TARGET_COLUMNS,
    assign_splits,
    build_targets,
    check_split_fractions,
    read_targets,
    split_counts,
)
from deltabelief.data.teachers import exact_log_posterior
from deltabelief.games.twenty_questions import FIRST_PROMPT, SYSTEM_PROMPT
from deltabelief.synthesis import TRAJECTORY_COLUMNS, synthesize
from deltabelief.types import STATUSES

DATA = Path(__file__).parent / "data"
ANCHOR = REFERENCE_DATA
WORDS = f"words:{DATA / 'words_small.txt'}"
PAPRIKA = f"paprika:{DATA / 'paprika_small.json'}"


@pytest.mark.parametrize(
    "num, fractions, expected",
    [
        (10, [0.8, 0.1, 0.1], [8, 1, 1]),  # bounds round(8.0)=8, round(9.0)=9, 10
        (7, [0.8, 0.1, 0.1], [6, 0, 1]),  # bounds round(5.6)=6, round(6.3)=6, 7
        (9, [0.8, 0.1], [8, 1]),  # renormalised to 8/9, 1/9: bounds 8, 9
        (3, [1 / 3, 1 / 3, 1 / 3], [1, 1, 1]),
        (0, [0.8, 0.1, 0.1], [0, 0, 0]),
    ],
)
def test_split_counts_by_hand(num, fractions, expected):
    assert split_counts(num, fractions) == expected


@pytest.mark.parametrize("bad", [[0.8, 0.1], [0.8, 0.3, -0.1], [0.5, 0.2, 0.2]])
def test_split_fractions_are_checked(bad):
    with pytest.raises(ValueError, match="three non-negative fractions"):
        check_split_fractions(bad)


def test_assign_splits_is_seeded_and_exact():
    records = [SourceRecord(target=f"t{i}", source_id=str(i)) for i in range(20)]
    first = assign_splits(records, [0.8, 0.1, 0.1], seed=3)
    assert first == assign_splits(records, [0.8, 0.1, 0.1], seed=3)
    assert first != assign_splits(records, [0.8, 0.1, 0.1], seed=4)
    assert [first.count(s) for s in ("train", "val", "test")] == [16, 2, 2]


def test_fixed_splits_are_kept_and_free_ones_use_the_rest():
    records = [SourceRecord("a", "0", split="test")] + [SourceRecord(f"t{i}", str(i)) for i in range(9)]
    splits = assign_splits(records, [0.8, 0.1, 0.1], seed=0)
    assert splits[0] == "test"
    assert sorted(splits[1:]) == ["train"] * 8 + ["val"]  # 9 free records over train/val as 8/9, 1/9


def test_words_targets_report_duplicates_and_use_the_game_prompt(tmp_path):
    result = synthesize(DataConfig(source=WORDS, teacher="none", seed=0), GameConfig(max_turns=12), tmp_path)
    frame = pd.read_parquet(result.targets_path)
    assert list(frame.columns) == list(TARGET_COLUMNS)
    assert len(frame) == 10 and result.report["num_records"] == 11
    assert frame["split"].value_counts().to_dict() == {"train": 8, "val": 1, "test": 1}
    assert list(frame["id"][:2]) == ["twenty_questions-00000", "twenty_questions-00001"]
    (dup,) = result.report["duplicates"]
    assert (dup["target"], dup["kept"], dup["dropped"], dup["kept_id"]) == (
        "banana", "line 3", "line 10", "twenty_questions-00001"
    )
    assert dup["kept_split"] == frame.set_index("id").loc["twenty_questions-00001", "split"]
    messages = list(frame["messages"][0])
    assert [m["role"] for m in messages] == ["system", "user"]
    assert messages[0]["content"] == SYSTEM_PROMPT.format(max_turns=12)
    assert messages[1]["content"] == FIRST_PROMPT
    assert json.loads(frame["extra"][0]) == {"source": "words"}
    assert result.trajectories_path is None and "teacher" not in result.report
    assert json.loads(result.report_path.read_text())["num_duplicates"] == 1


def test_splits_are_disjoint_and_reproducible(tmp_path):
    data = DataConfig(source=WORDS, teacher="none", seed=7)
    a = pd.read_parquet(synthesize(data, GameConfig(), tmp_path / "a").targets_path)
    b = pd.read_parquet(synthesize(data, GameConfig(), tmp_path / "b").targets_path)
    c = pd.read_parquet(synthesize(DataConfig(source=WORDS, teacher="none", seed=8), GameConfig(), tmp_path / "c").targets_path)
    pd.testing.assert_frame_equal(a, b)
    assert list(a["split"]) != list(c["split"])
    for frame in (a, c):
        keys = frame["target"].str.casefold().str.strip()
        assert keys.is_unique  # one row per target, so one split per target
        assert set(frame["split"]) <= {"train", "val", "test"}


def test_paprika_targets_train_val_from_train_test_from_eval(tmp_path):
    result = synthesize(DataConfig(source=PAPRIKA, teacher="none"), GameConfig(), tmp_path)
    frame = pd.read_parquet(result.targets_path).set_index("target")
    assert result.report["splits"] == {"train": 8, "val": 1, "test": 2}
    assert set(frame.index[frame["split"] == "test"]) == {"Harp", "Penguin"}
    (dup,) = result.report["duplicates"]
    assert (dup["target"], dup["dropped_split"], dup["kept_split"]) == ("walrus", "test", frame.loc["Walrus", "split"])
    assert json.loads(frame.loc["Harp", "extra"]) == {"briefing": "instrument", "source": "paprika"}
    assert list(frame.loc["Harp", "messages"])[0]["role"] == "user"


def test_reference_targets_keep_the_file_split_and_prompts(tmp_path):
    source = f"reference:{ANCHOR / 'customer_service' / 'test.parquet'}"
    result = synthesize(DataConfig(source=source, teacher="none"), GameConfig(), tmp_path)
    frame = pd.read_parquet(result.targets_path)
    assert len(frame) == 200 and set(frame["split"]) == {"test"} and set(frame["task"]) == {"customer_service"}
    raw = pd.read_parquet(ANCHOR / "customer_service" / "test.parquet")
    assert frame["target"][0] == raw["golden_answers"][0]
    assert frame["messages"][0][0]["content"] == raw["prompt"][0][0]["content"]
    assert json.loads(frame["extra"][0])["scenario"] == raw["extra_info"][0]["scenario"]


def test_targets_round_trip_and_load_with_hf_datasets(tmp_path):
    result = synthesize(DataConfig(source=PAPRIKA, teacher="none"), GameConfig(), tmp_path)
    targets = read_targets(result.targets_path)
    assert targets[0].answer == "Violin" and targets[0].extra["briefing"] == "instrument"
    assert [t.answer for t in read_targets(result.targets_path, split="test")] == ["Harp", "Penguin"]
    import datasets

    dataset = datasets.Dataset.from_parquet(str(result.targets_path))
    assert dataset.column_names == list(TARGET_COLUMNS)
    assert dataset[0]["messages"][0].keys() == {"role", "content"}


def test_teacher_needs_the_kb_source(tmp_path):
    result = synthesize(DataConfig(source=WORDS, teacher="greedy"), GameConfig(), tmp_path)
    assert result.trajectories_path is None
    assert "need --source kb" in result.report["teacher"]["skipped"]
    assert any("skipped" in line for line in result.summary_lines())


@pytest.fixture(scope="module")
def small_nouns():
    return load_kb().nouns[:10]


def test_greedy_trajectories_schema_and_exact_posterior(tmp_path, small_nouns):
    game = GameConfig(kb_nouns=small_nouns)
    result = synthesize(DataConfig(source="kb", teacher="greedy", num_games=14, seed=1), game, tmp_path)
    frame = pd.read_parquet(result.trajectories_path)
    assert list(frame.columns) == list(TRAJECTORY_COLUMNS) and len(frame) == 14
    assert frame["id"].is_unique and set(frame["teacher"]) == {"greedy"}
    kb = load_kb(nouns=small_nouns)
    split_of = pd.read_parquet(result.targets_path).set_index("id")["split"]
    for row in frame.to_dict(orient="records"):
        moves, statuses = list(row["moves"]), list(row["statuses"])
        assert row["solved"] and statuses[-1] == "finished" and set(statuses) <= set(STATUSES)
        assert row["num_turns"] == len(moves) <= row["max_turns"] == 20
        assert row["split"] == split_of[row["target_id"]]
        posterior = list(row["log_posterior"])
        assert posterior[0] == pytest.approx(-math.log(len(small_nouns))) and posterior[-1] == 0.0
        assert posterior == pytest.approx(exact_log_posterior(kb, moves, statuses, row["target"]))
        roles = [m["role"] for m in row["messages"]]
        assert roles == ["system", "user"] + ["assistant", "user"] * row["num_turns"]
        assert [m["content"] for m in row["messages"][2::2]] == moves
    teacher = result.report["teacher"]
    assert teacher["games_played"] == 14 and teacher["solved_rate"] == 1.0
    assert teacher["log2_nouns"] == pytest.approx(math.log2(len(small_nouns)))
    assert teacher["mean_questions"] == pytest.approx(frame["num_turns"].mean())
    assert "vs log2(#nouns)" in result.summary_lines()[-1]
    assert result.report["teacher_mean_questions"] == teacher["mean_questions"]
    assert result.report["log2_num_nouns"] == teacher["log2_nouns"]


def test_only_solved_rejects_unfinished_games(tmp_path, small_nouns):
    # ε = 0.5 and 3 turns: half the questions random, too few turns to pin down one of 10 nouns
    # every time, so some games end unfinished; rejection sampling keeps only finished ones.
    data = DataConfig(source="kb", teacher="noisy", noise_epsilon=0.5, num_games=12, only_solved=True)
    result = synthesize(data, GameConfig(kb_nouns=small_nouns, max_turns=3), tmp_path)
    teacher = result.report["teacher"]
    frame = pd.read_parquet(result.trajectories_path)
    assert teacher["games_played"] == 12
    assert teacher["games_kept"] == len(frame) == 12 - teacher["games_rejected"]
    assert teacher["games_rejected"] > 0 and teacher["games_kept"] > 0
    assert frame["solved"].all()


def test_build_targets_rejects_kb_for_other_tasks():
    with pytest.raises(ValueError, match="twenty_questions only"):
        build_targets(DataConfig(source="kb", task="guess_my_city"), GameConfig())


def test_teacher_schedule_reaches_held_out_targets_with_fewer_games_than_train_targets():
    """With 100 games over 224 KB nouns (179 train), the schedule must not fill train first:
    calibration scores the val/test games, and a schedule that repeats the split shuffle has none."""
    from deltabelief.synthesis import schedule_targets

    table = build_targets(DataConfig(source="kb", seed=0), GameConfig())
    split_of = {t.id: s for t, s in zip(table.targets, table.splits)}
    scheduled = schedule_targets(table.targets, 100, seed=0)
    held_out = [t for t in scheduled if split_of[t.id] != "train"]
    assert len({t.id for t in scheduled}) == 100  # no repeats before every target is played once
    assert {split_of[t.id] for t in held_out} == {"val", "test"}
    assert 5 <= len(held_out) <= 40  # about 20 expected at 20% held out
    assert schedule_targets(table.targets, 100, seed=0) == scheduled


# ---------------------------------------------------------------- one set, written atomically


def _good_set(out: Path, nouns: list[str]) -> dict[str, bytes]:
    synthesize(DataConfig(source="kb", teacher="greedy", num_games=4), GameConfig(kb_nouns=nouns), out)
    return {p.name: p.read_bytes() for p in out.iterdir()}


def _empty_reference(tmp_path: Path) -> Path:
    path = tmp_path / "EMPTY.parquet"
    pd.DataFrame(columns=["data_source", "id", "golden_answers", "prompt", "reward_model", "extra_info"]).to_parquet(path)
    return path


def test_an_empty_source_is_refused_and_the_good_set_is_kept(tmp_path, small_nouns):
    from deltabelief.synthesis import SynthesisError

    out = tmp_path / "data"
    before = _good_set(out, small_nouns)
    data = DataConfig(source=f"reference:{_empty_reference(tmp_path)}", teacher="none")
    with pytest.raises(SynthesisError, match=r"EMPTY\.parquet' gave no targets \(0 records read\); nothing was written"):
        synthesize(data, GameConfig(), out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["EMPTY.parquet", "data"]  # no staging left behind


def test_no_kept_teacher_game_is_an_empty_result(tmp_path, small_nouns):
    from deltabelief.synthesis import SynthesisError

    data = DataConfig(source="kb", teacher="noisy", noise_epsilon=1.0, num_games=1, only_solved=True)
    with pytest.raises(SynthesisError, match=r"no teacher game was kept \(1 played, only_solved=True\)"):
        synthesize(data, GameConfig(kb_nouns=small_nouns, max_turns=1), tmp_path / "data")
    assert list(tmp_path.iterdir()) == []


def test_a_failure_half_way_leaves_no_half_set_and_no_new_folders(tmp_path, small_nouns, monkeypatch):
    import deltabelief.synthesis as synthesis

    out = tmp_path / "data"
    before = _good_set(out, small_nouns)
    real = synthesis.write_parquet

    def fail_on_trajectories(frame, path, kind):
        if kind == "trajectories":
            raise OSError("disk full")
        real(frame, path, kind)

    monkeypatch.setattr(synthesis, "write_parquet", fail_on_trajectories)
    data = DataConfig(source="kb", teacher="greedy", num_games=2, seed=5)
    with pytest.raises(OSError, match="disk full"):
        synthesize(data, GameConfig(kb_nouns=small_nouns), out)  # targets.parquet was written, then this
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the old set, whole
    with pytest.raises(OSError, match="disk full"):
        synthesize(data, GameConfig(kb_nouns=small_nouns), tmp_path / "new" / "deeper" / "data")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # neither staging nor empty new folders


def test_a_new_set_replaces_the_old_one_whole(tmp_path, small_nouns):
    out = tmp_path / "data"
    _good_set(out, small_nouns)
    (out / "targets.validation.json").write_text("{}")  # a report about the old targets
    synthesize(DataConfig(source="kb", teacher="none"), GameConfig(kb_nouns=small_nouns), out)
    assert sorted(p.name for p in out.iterdir()) == ["synthesis.json", "targets.parquet"]


def test_an_out_dir_holding_other_files_is_refused(tmp_path, small_nouns):
    from deltabelief.synthesis import SynthesisError

    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(SynthesisError, match=r"holds files a synthesis did not write \(notes\.txt\)"):
        synthesize(DataConfig(source="kb", teacher="none"), GameConfig(kb_nouns=small_nouns), tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]
