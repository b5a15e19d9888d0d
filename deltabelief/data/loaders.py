"""Loaders for target sources: a word list, the reference project's parquet files, PAPRIKA configs.

Every loader returns :class:`SourceRecord` objects in file order; nothing is dropped or
deduplicated here (that is :mod:`deltabelief.data.targets`' job, which reports duplicates).
A record that breaks the source's format raises :class:`SourceFormatError` naming the file,
the row and the rule.

Source strings (``DataConfig.source``):

- ``kb``                the built-in knowledge base's nouns;
- ``words:PATH``        a text file, one target per line (blank lines and ``#`` comments skipped);
- ``reference:PATH``    a parquet file (or a directory of them) in the reference project's schema:
                        ``golden_answers``, ``prompt``, optional ``system_prompt``,
                        ``reward_model.ground_truth.target``, ``extra_info.split``;
- ``paprika:PATH``      a PAPRIKA game-config JSON with top-level ``train`` and ``eval`` lists of
                        ``{"env": target, "agent": briefing}``; ``eval`` becomes the test split.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deltabelief.data.files import read_utf8_text
from deltabelief.types import Message

SOURCE_KINDS = ("kb", "words", "reference", "paprika")
SPLITS = ("train", "val", "test")

# The reference files name their task in `data_source`; map it onto our game names.
REFERENCE_TASKS = {
    "tw_q": "twenty_questions",
    "twenty_questions": "twenty_questions",
    "guess_my_city": "guess_my_city",
    "murder_mystery": "murder_mystery",
    "customer_service": "customer_service",
}
REFERENCE_COLUMNS = ("golden_answers", "prompt", "reward_model", "extra_info")


class SourceFormatError(ValueError):
    """A source file that does not follow its format; the message names file, row and rule."""


@dataclass(frozen=True)
class SourceRecord:
    """One target as read from a source, before ids and splits are assigned."""

    target: str
    source_id: str
    """Where it came from, for reports: 'line 3', 'train_rl.parquet:train_0', 'eval[4]'."""
    split: str | None = None
    """A split fixed by the source (reference, PAPRIKA eval); None lets the seed decide."""
    messages: tuple[Message, ...] = ()
    """The source's own opening messages; empty means the game writes them."""
    extra: dict[str, Any] = field(default_factory=dict)
    task: str | None = None
    """The task the source names (reference `data_source`); None means DataConfig.task."""


DATA_ROOT_ENV = "DELTABELIEF_DATA_ROOT"


def resolve_data_path(path: str) -> Path:
    """A source's path: absolute as given; relative, under ``$DELTABELIEF_DATA_ROOT`` when it is set
    (the paper presets name their files that way, docs/cluster.md), else the working directory."""
    resolved = Path(path).expanduser()
    root = os.environ.get(DATA_ROOT_ENV)
    if root and not resolved.is_absolute():
        resolved = Path(root).expanduser() / resolved
    return resolved


def parse_source(source: str) -> tuple[str, Path | None]:
    """``'words:/x/y.txt'`` -> ``('words', Path('/x/y.txt'))``; ``'kb'`` -> ``('kb', None)``."""
    kind, _, path = source.partition(":")
    if kind not in SOURCE_KINDS:
        raise ValueError(f"unknown data source {source!r}; use one of kb, words:PATH, reference:PATH, paprika:PATH")
    if kind == "kb":
        if path:
            raise ValueError(f"source 'kb' takes no path, got {source!r}")
        return kind, None
    if not path:
        raise ValueError(f"source {kind!r} needs a path: '{kind}:PATH'")
    resolved = resolve_data_path(path)
    if not resolved.exists():
        root = os.environ.get(DATA_ROOT_ENV)
        where = f"{DATA_ROOT_ENV}={root}" if root else f"{DATA_ROOT_ENV} is not set"
        raise FileNotFoundError(f"data source {source!r}: {resolved} does not exist ({where}; docs/cluster.md)")
    return kind, resolved


def load_source(source: str, kb_nouns: list[str] | None = None) -> list[SourceRecord]:
    """Read any source string into records (``kb_nouns`` restricts the knowledge base)."""
    kind, path = parse_source(source)
    if kind == "kb":
        return load_kb_records(kb_nouns)
    assert path is not None
    return {"words": load_words, "reference": load_reference, "paprika": load_paprika}[kind](path)


def load_kb_records(nouns: list[str] | None = None) -> list[SourceRecord]:
    """The knowledge base's nouns (all, or the given subset) as records."""
    from deltabelief.data.knowledge_base import load_kb

    kb = load_kb(nouns=nouns or None)
    return [SourceRecord(target=n, source_id=f"kb:{n}", extra={"source": "kb"}) for n in kb.nouns]


def load_words(path: Path) -> list[SourceRecord]:
    """One target per line; blank lines and lines starting with '#' are not targets."""
    records = []
    for number, line in enumerate(read_utf8_text(path).splitlines(), start=1):
        text = line.strip()
        if text and not text.startswith("#"):
            records.append(SourceRecord(target=text, source_id=f"line {number}", extra={"source": "words"}))
    if not records:
        raise SourceFormatError(f"{path}: no targets (one target per line expected)")
    return records


# ---------------------------------------------------------------- reference parquet


def to_python(value: Any) -> Any:
    """numpy arrays (how parquet hands back lists) -> lists, recursively through dicts."""
    if isinstance(value, np.ndarray):
        return [to_python(v) for v in value.tolist()]
    if isinstance(value, (list, tuple)):
        return [to_python(v) for v in value]
    if isinstance(value, dict):
        return {k: to_python(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        return value.item()
    return value


def _reference_messages(row: dict, where: str) -> tuple[Message, ...]:
    messages: list[Message] = []
    system = row.get("system_prompt")
    if system is not None:
        messages.append({"role": "system", "content": str(system["content"])})
    prompt = row["prompt"]
    if not isinstance(prompt, list) or not prompt:
        raise SourceFormatError(f"{where}: 'prompt' must be a non-empty list of messages, got {prompt!r}")
    for message in prompt:
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise SourceFormatError(f"{where}: every 'prompt' message needs 'role' and 'content', got {message!r}")
        messages.append({"role": str(message["role"]), "content": str(message["content"])})
    return tuple(messages)


def _reference_record(row: dict, where: str) -> SourceRecord:
    target = row["golden_answers"]
    if not isinstance(target, str) or not target.strip():
        raise SourceFormatError(f"{where}: 'golden_answers' must be a non-empty string, got {target!r}")
    truth = (row["reward_model"] or {}).get("ground_truth", {}).get("target")
    if truth is None or list(truth) != [target]:
        raise SourceFormatError(
            f"{where}: reward_model.ground_truth.target {truth!r} does not equal golden_answers {target!r}"
        )
    info = dict(row["extra_info"] or {})
    split = info.pop("split", None)
    if split not in SPLITS:
        raise SourceFormatError(f"{where}: extra_info.split must be one of {list(SPLITS)}, got {split!r}")
    info.pop("index", None)
    data_source = row.get("data_source")
    extra = {"source": "reference", "source_id": row.get("id"), **info}
    return SourceRecord(
        target=target.strip(),
        source_id=where,
        split=split,
        messages=_reference_messages(row, where),
        extra=extra,
        task=REFERENCE_TASKS.get(data_source) if data_source else None,
    )


def load_reference(path: Path) -> list[SourceRecord]:
    """A reference-schema parquet file, or every ``*.parquet`` in a directory (sorted by name)."""
    from deltabelief.data.files import read_parquet

    path = Path(path)
    files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
    if not files:
        raise SourceFormatError(f"{path}: no .parquet files")
    records = []
    for file in files:
        frame = read_parquet(file)
        missing = [c for c in REFERENCE_COLUMNS if c not in frame.columns]
        if missing:
            raise SourceFormatError(f"{file}: missing reference column(s) {missing}; have {list(frame.columns)}")
        for index, row in enumerate(frame.to_dict(orient="records")):
            row = to_python(row)
            where = f"{file.name}:{row.get('id', index)}"
            records.append(_reference_record(row, where))
    return records


# ---------------------------------------------------------------- PAPRIKA configs


def _paprika_messages(template: Any, briefing: str, where: str) -> tuple[Message, ...]:
    if template is None:
        return ()
    if not isinstance(template, str):
        raise SourceFormatError(f"{where}: top-level 'agent' must be a prompt string, got {type(template).__name__}")
    if "{env}" in template:
        raise SourceFormatError(f"{where}: the questioner's prompt ('agent') must not contain {{env}} (the answer)")
    return ({"role": "user", "content": template.replace("{agent}", briefing)},)


def load_paprika(path: Path) -> list[SourceRecord]:
    """A PAPRIKA game config: ``train`` items keep no fixed split (seeded train/val), ``eval`` -> test.

    The questioner's opening message is the config's top-level ``agent`` prompt with ``{agent}``
    replaced by the item's briefing; without a top-level prompt the game writes its own.
    """
    path = Path(path)
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise SourceFormatError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(config, dict) or not isinstance(config.get("train"), list) or not isinstance(
        config.get("eval"), list
    ):
        raise SourceFormatError(f"{path}: a PAPRIKA config needs top-level 'train' and 'eval' lists")
    records = []
    for part, split in (("train", None), ("eval", "test")):
        for index, item in enumerate(config[part]):
            where = f"{path.name}:{part}[{index}]"
            if not isinstance(item, dict) or not isinstance(item.get("env"), str) or not item["env"].strip():
                raise SourceFormatError(f"{where}: each item needs a non-empty string 'env' (the target)")
            briefing = item.get("agent", "")
            if not isinstance(briefing, str):
                raise SourceFormatError(f"{where}: 'agent' (the questioner's briefing) must be a string")
            records.append(
                SourceRecord(
                    target=item["env"].strip(),
                    source_id=where,
                    split=split,
                    messages=_paprika_messages(config.get("agent"), briefing, where),
                    extra={"source": "paprika", "briefing": briefing},
                )
            )
    return records
