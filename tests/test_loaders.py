"""Loaders: word lists, the reference project's parquet files (read in place), PAPRIKA configs."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from anchor import REFERENCE_DATA
from deltabelief.data.loaders import (
    SourceFormatError,
    load_paprika,
    load_reference,
    load_source,
    load_words,
    parse_source,
)

DATA = Path(__file__).parent / "data"
ANCHOR = REFERENCE_DATA


def test_parse_source_kinds_and_errors(tmp_path):
    assert parse_source("kb") == ("kb", None)
    assert parse_source(f"words:{DATA / 'words_small.txt'}") == ("words", DATA / "words_small.txt")
    with pytest.raises(ValueError, match="unknown data source 'csv:x'"):
        parse_source("csv:x")
    with pytest.raises(ValueError, match="needs a path"):
        parse_source("words:")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        parse_source(f"words:{tmp_path / 'nope.txt'}")


def test_words_file_skips_comments_and_blank_lines_and_keeps_duplicates():
    records = load_words(DATA / "words_small.txt")
    # 13 lines: 1 comment, 1 blank, 11 targets (' banana' on line 10 repeats 'Banana' on line 3).
    assert len(records) == 11
    assert records[0].target == "apple" and records[0].source_id == "line 2"
    assert records[7].target == "banana" and records[7].source_id == "line 10"
    assert all(r.split is None and r.messages == () for r in records)


def test_empty_words_file_is_an_error(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_text("# nothing\n\n")
    with pytest.raises(SourceFormatError, match="no targets"):
        load_words(path)


@pytest.mark.parametrize(
    "relative, rows, task, split",
    [
        ("twenty_questions/train_rl.parquet", 1000, "twenty_questions", "train"),
        ("twenty_questions/val.parquet", 198, "twenty_questions", "val"),
        ("guess_my_city/test.parquet", 185, "guess_my_city", "test"),
        ("murder_mystery/test.parquet", 50, "murder_mystery", "test"),
        ("customer_service/test.parquet", 200, "customer_service", "test"),
    ],
)
def test_reference_files_load(relative, rows, task, split):
    records = load_reference(ANCHOR / relative)
    assert len(records) == rows
    assert {r.task for r in records} == {task}
    assert {r.split for r in records} == {split}
    first = records[0]
    raw = pd.read_parquet(ANCHOR / relative).iloc[0]
    assert first.target == raw["golden_answers"].strip()
    # The source's own opening: the system prompt where the file has one, then its user prompt.
    roles = [m["role"] for m in first.messages]
    assert roles == (["system", "user"] if "system_prompt" in raw.index else ["user"])
    assert first.messages[-1]["content"] == raw["prompt"][0]["content"]
    assert first.extra["source"] == "reference" and first.extra["source_id"] == raw["id"]


def test_reference_keeps_customer_service_scenario():
    record = load_reference(ANCHOR / "customer_service/test.parquet")[0]
    assert record.extra["scenario"].startswith("The customer's refrigerator is beeping")


def test_reference_directory_loads_every_file_in_name_order():
    records = load_reference(ANCHOR / "twenty_questions")
    # train_rl.parquet sorts before val.parquet.
    assert len(records) == 1198
    assert records[0].split == "train" and records[-1].split == "val"


def _reference_frame(**overrides) -> pd.DataFrame:
    row = {
        "data_source": "tw_q",
        "id": "train_0",
        "golden_answers": "kettle",
        "prompt": [{"role": "user", "content": "Ask a question."}],
        "reward_model": {"ground_truth": {"target": ["kettle"]}, "style": "rule"},
        "extra_info": {"index": 0, "split": "train"},
    }
    row.update(overrides)
    return pd.DataFrame([row])


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"reward_model": {"ground_truth": {"target": ["kettles"]}, "style": "rule"}}, "does not equal golden_answers"),
        ({"extra_info": {"index": 0, "split": "dev"}}, "extra_info.split must be one of"),
        ({"golden_answers": "  "}, "'golden_answers' must be a non-empty string"),
    ],
)
def test_reference_row_errors_name_the_row(tmp_path, overrides, message):
    path = tmp_path / "bad.parquet"
    _reference_frame(**overrides).to_parquet(path)
    with pytest.raises(SourceFormatError, match=message) as err:
        load_reference(path)
    assert "bad.parquet:train_0" in str(err.value)


def test_reference_missing_column_is_named(tmp_path):
    path = tmp_path / "bad.parquet"
    _reference_frame().drop(columns=["reward_model"]).to_parquet(path)
    with pytest.raises(SourceFormatError, match=r"missing reference column\(s\) \['reward_model'\]"):
        load_reference(path)


def test_paprika_train_is_free_and_eval_is_test():
    records = load_paprika(DATA / "paprika_small.json")
    assert len(records) == 12  # 9 train + 3 eval, the repeated walrus included
    train, evaluation = records[:9], records[9:]
    assert all(r.split is None for r in train) and all(r.split == "test" for r in evaluation)
    assert train[0].target == "Violin" and train[0].extra == {"source": "paprika", "briefing": "instrument"}
    assert train[0].messages == (
        {
            "role": "user",
            "content": "Let's play Twenty Questions. I picked a instrument; find it with yes/no questions, one per turn.",
        },
    )
    assert evaluation[0].source_id == "paprika_small.json:eval[0]"


def test_paprika_without_prompt_lets_the_game_write_it(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"train": [{"env": "Kite", "agent": "toy"}], "eval": []}))
    (record,) = load_paprika(path)
    assert record.messages == () and record.target == "Kite"


@pytest.mark.parametrize(
    "config, message",
    [
        ({"train": []}, "top-level 'train' and 'eval' lists"),
        ({"train": [{"agent": "toy"}], "eval": []}, r"train\[0\]: each item needs a non-empty string 'env'"),
        ({"agent": "Find the {env}.", "train": [{"env": "Kite", "agent": "toy"}], "eval": []}, "must not contain"),
    ],
)
def test_paprika_format_errors(tmp_path, config, message):
    path = tmp_path / "p.json"
    path.write_text(json.dumps(config))
    with pytest.raises(SourceFormatError, match=message):
        load_paprika(path)


def test_load_source_dispatches_on_the_prefix():
    records = load_source(f"paprika:{DATA / 'paprika_small.json'}")
    assert [r.target for r in records][:2] == ["Violin", "Walrus"]


def test_relative_source_paths_are_read_under_the_data_root(tmp_path, monkeypatch):
    from deltabelief.data.loaders import parse_source

    (tmp_path / "words.txt").write_text("apple\n")
    monkeypatch.setenv("DELTABELIEF_DATA_ROOT", str(tmp_path))
    assert parse_source("words:words.txt") == ("words", tmp_path / "words.txt")
    assert parse_source(f"words:{tmp_path / 'words.txt'}")[1] == tmp_path / "words.txt"  # absolute: as given
    with pytest.raises(FileNotFoundError, match="DELTABELIEF_DATA_ROOT=.*docs/cluster.md"):
        parse_source("words:missing.txt")
    monkeypatch.delenv("DELTABELIEF_DATA_ROOT")
    with pytest.raises(FileNotFoundError, match="DELTABELIEF_DATA_ROOT is not set"):
        parse_source("words:words.txt")
