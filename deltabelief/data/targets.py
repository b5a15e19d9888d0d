"""Targets: ids, deduplication and seeded train/val/test splits, written as ``targets.parquet``.

Schema of ``targets.parquet`` (one row per target; docs/data.md):

=========  ==========================  ==============================================
column     type                        meaning
=========  ==========================  ==============================================
id         str, unique                 ``{task}-{index:05d}`` in source order
task       str                         game name (``twenty_questions``, ...)
target     str, non-empty              the hidden target
split      'train' | 'val' | 'test'    a target sits in exactly one split
messages   list of {role, content}     system + first prompt (the source's own, or the game's)
extra      str (JSON object)           task context for the judge, plus ``source``
=========  ==========================  ==============================================

Duplicates (same task and same target up to case and spacing) keep their first occurrence
and are listed in the report, never dropped silently.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from deltabelief.config import DataConfig, GameConfig
from deltabelief.data.loaders import SPLITS, SourceRecord, load_source, parse_source, to_python
from deltabelief.games.base import Game, build_game
from deltabelief.types import Target

logger = logging.getLogger(__name__)

TARGET_COLUMNS = ("id", "task", "target", "split", "messages", "extra")


def normalize_target(text: str) -> str:
    """Case- and spacing-insensitive key: ' The  Dog' and 'the dog' are the same target."""
    return " ".join(text.casefold().split())


def check_split_fractions(split: list[float]) -> list[float]:
    """Three non-negative fractions (train, val, test) that sum to 1."""
    if len(split) != 3 or any(f < 0 for f in split) or abs(sum(split) - 1.0) > 1e-6:
        raise ValueError(f"split must be three non-negative fractions train,val,test summing to 1, got {split}")
    return list(split)


def split_counts(num: int, fractions: list[float]) -> list[int]:
    """How many of ``num`` items each split gets: rounded cumulative boundaries, so counts sum to num."""
    total = sum(fractions)
    bounds, cumulative = [0], 0.0
    for fraction in fractions:
        cumulative += fraction / total
        bounds.append(round(cumulative * num))
    bounds[-1] = num
    return [b - a for a, b in zip(bounds, bounds[1:])]


def assign_splits(records: list[SourceRecord], fractions: list[float], seed: int) -> list[str]:
    """A split per record: the source's own where it fixes one, else seeded.

    Records without a fixed split are shuffled with ``random.Random(seed)`` and cut in the
    configured proportions over the splits that no record fixes (a PAPRIKA file fixes
    'test' through its eval list, so its train items are cut into train and val).
    """
    fractions = check_split_fractions(fractions)
    fixed = {r.split for r in records if r.split is not None}
    free_splits = [s for s in SPLITS if s not in fixed]
    free = [i for i, r in enumerate(records) if r.split is None]
    splits = [r.split for r in records]
    if free:
        weights = [fractions[SPLITS.index(s)] for s in free_splits]
        if not free_splits or sum(weights) <= 0:
            raise ValueError(
                f"{len(free)} targets need a split but the fractions {fractions} give none of {free_splits} any room"
            )
        order = list(free)
        random.Random(seed).shuffle(order)
        start = 0
        for name, count in zip(free_splits, split_counts(len(order), weights)):
            for i in order[start : start + count]:
                splits[i] = name
            start += count
    return splits  # type: ignore[return-value]


def dedupe(records: list[SourceRecord], default_task: str) -> tuple[list[SourceRecord], list[dict[str, Any]]]:
    """Keep the first record of each (task, normalized target); report every later one.

    Each duplicate names the kept and the dropped record (``source_id``), the dropped record's
    own split (None when the seed decides) and ``kept_index``, the kept record's position.
    """
    first: dict[tuple[str, str], int] = {}
    kept: list[SourceRecord] = []
    duplicates: list[dict[str, Any]] = []
    for record in records:
        key = (record.task or default_task, normalize_target(record.target))
        if key in first:
            original = kept[first[key]]
            duplicates.append(
                {
                    "task": key[0],
                    "target": record.target,
                    "kept": original.source_id,
                    "kept_index": first[key],
                    "dropped": record.source_id,
                    "dropped_split": record.split,
                }
            )
            continue
        first[key] = len(kept)
        kept.append(record)
    if duplicates:
        logger.warning("%d duplicate target(s) kept once: %s", len(duplicates), [d["target"] for d in duplicates[:10]])
    return kept, duplicates


@dataclass
class TargetTable:
    """Targets with their splits, plus what the source had to say (duplicates)."""

    targets: list[Target]
    splits: list[str]
    duplicates: list[dict[str, Any]] = field(default_factory=list)
    num_records: int = 0
    """Records read from the source, duplicates included."""

    def frame(self):
        """The ``targets.parquet`` table (pandas)."""
        import pandas as pd

        rows = [
            {
                "id": t.id,
                "task": t.task,
                "target": t.answer,
                "split": split,
                "messages": [dict(m) for m in t.messages],
                "extra": t.extra_json(),
            }
            for t, split in zip(self.targets, self.splits)
        ]
        return pd.DataFrame(rows, columns=list(TARGET_COLUMNS))

    def split_counts(self) -> dict[str, int]:
        return {s: self.splits.count(s) for s in SPLITS}


def build_targets(data: DataConfig, game: GameConfig) -> TargetTable:
    """Read ``data.source``, dedupe, give ids and splits, and fill in opening messages."""
    kind, _ = parse_source(data.source)
    if kind == "kb" and data.task != "twenty_questions":
        raise ValueError(f"the knowledge-base source serves twenty_questions only, not task {data.task!r}")
    records = load_source(data.source, kb_nouns=game.kb_nouns)
    kept, duplicates = dedupe(records, data.task)
    splits = assign_splits(kept, data.split, data.seed)
    games: dict[str, Game] = {}
    targets = []
    for index, record in enumerate(kept):
        task = record.task or data.task
        target = Target(
            id=f"{task}-{index:05d}", task=task, answer=record.target, extra=dict(record.extra),
            messages=record.messages,
        )
        if not target.messages:
            if task not in games:
                games[task] = build_game(game, task)
            target = replace(target, messages=tuple(games[task].opening_messages(target)))
        targets.append(target)
    for duplicate in duplicates:  # name the kept target by its id and final split
        index = duplicate.pop("kept_index")
        duplicate["kept_id"], duplicate["kept_split"] = targets[index].id, splits[index]
    return TargetTable(targets=targets, splits=splits, duplicates=duplicates, num_records=len(records))


def read_targets(path: str | Path, split: str | None = None) -> list[Target]:
    """``targets.parquet`` -> :class:`Target` objects (optionally one split only)."""
    from deltabelief.data.files import read_parquet

    frame = read_parquet(path)
    if split is not None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
        frame = frame[frame["split"] == split]
    targets = []
    for row in frame.to_dict(orient="records"):
        row = to_python(row)
        targets.append(
            Target(
                id=row["id"],
                task=row["task"],
                answer=row["target"],
                extra=json.loads(row["extra"]),
                messages=tuple({"role": m["role"], "content": m["content"]} for m in row["messages"]),
            )
        )
    return targets
