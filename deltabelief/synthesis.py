"""``deltabelief synth``: targets with splits, and teacher trajectories for the warm start.

Outputs in ``out_dir``:

- ``targets.parquet``       always (schema: :mod:`deltabelief.data.targets`);
- ``trajectories.parquet``  when ``data.teacher`` is not 'none' and the source is the knowledge base;
- ``synthesis.json``        the report: counts per split, duplicates, teacher statistics.

The files are written as one set: into a staging directory beside ``out_dir``, which
replaces ``out_dir`` only once every file is written. A failure (or an empty result,
which is refused) leaves ``out_dir`` as it was, and no staging or newly made empty
folders behind. ``out_dir`` may hold only what a synthesis writes
(:data:`SYNTHESIS_FILES` and their ``*.validation.json`` reports), so replacing it
never deletes anything else.

Schema of ``trajectories.parquet`` (one row per teacher game; docs/data.md):
``id``, ``task``, ``target_id``, ``target``, ``split``, ``teacher``, ``messages`` (opening
messages, then assistant move / user answer per turn), ``moves``, ``answers``, ``statuses``
(lists of N), ``num_turns`` (N), ``max_turns``, ``solved``, ``log_posterior`` (N+1 floats,
log b*_t = −log|C_t| for t = 0..N; empty for tasks without a knowledge base).
"""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deltabelief.config import DataConfig, GameConfig
from deltabelief.data.knowledge_base import load_kb
from deltabelief.data.loaders import parse_source
from deltabelief.data.targets import TargetTable, build_targets
from deltabelief.data.teachers import TeacherGame, make_teacher, play_teacher_games
from deltabelief.games.base import Game, build_game
from deltabelief.types import Target

logger = logging.getLogger(__name__)

SYNTHESIS_FILES = ("targets.parquet", "trajectories.parquet", "synthesis.json")


class SynthesisError(ValueError):
    """A synthesis that would write an empty or inconsistent set, or replace files it did not write."""


TRAJECTORY_COLUMNS = (
    "id", "task", "target_id", "target", "split", "teacher", "messages", "moves", "answers",
    "statuses", "num_turns", "max_turns", "solved", "log_posterior",
)


@dataclass
class SynthesisResult:
    targets_path: Path
    trajectories_path: Path | None
    """None when no teacher games were played (teacher 'none', or a source other than kb)."""
    report_path: Path
    report: dict[str, Any] = field(default_factory=dict)

    def summary_lines(self) -> list[str]:
        """Human-readable lines for the CLI (teacher mean questions next to log2(#nouns))."""
        r = self.report
        lines = [
            f"targets: {r['num_targets']} ({', '.join(f'{k} {v}' for k, v in r['splits'].items())}), "
            f"{r['num_duplicates']} duplicate(s) reported -> {self.targets_path}"
        ]
        teacher = r.get("teacher")
        if teacher and "skipped" in teacher:
            lines.append(f"trajectories: skipped ({teacher['skipped']})")
        elif teacher:
            lines.append(
                f"trajectories: {teacher['games_kept']} of {teacher['games_played']} {teacher['name']} games kept, "
                f"solved {teacher['solved_rate']:.1%} -> {self.trajectories_path}"
            )
            lines.append(
                f"teacher mean questions {teacher['mean_questions']:.2f} vs log2(#nouns) "
                f"{teacher['log2_nouns']:.2f} ({teacher['num_nouns']} nouns)"
            )
        return lines


def _arrow_schema(kind: str):
    """Fixed parquet types, so an empty table or all-empty lists keep their column types."""
    import pyarrow as pa

    message = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
    if kind == "targets":
        fields = [("id", pa.string()), ("task", pa.string()), ("target", pa.string()), ("split", pa.string()),
                  ("messages", message), ("extra", pa.string())]
    else:
        strings = pa.list_(pa.string())
        fields = [("id", pa.string()), ("task", pa.string()), ("target_id", pa.string()), ("target", pa.string()),
                  ("split", pa.string()), ("teacher", pa.string()), ("messages", message), ("moves", strings),
                  ("answers", strings), ("statuses", strings), ("num_turns", pa.int64()), ("max_turns", pa.int64()),
                  ("solved", pa.bool_()), ("log_posterior", pa.list_(pa.float64()))]
    return pa.schema(fields)


def write_parquet(frame, path: Path, kind: str) -> None:
    """Write ``frame`` as parquet with the fixed schema of ``kind`` ('targets' or 'trajectories')."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pandas(frame, schema=_arrow_schema(kind), preserve_index=False), path)


def game_messages(opening: list[dict], moves: list[str], answers: list[str]) -> list[dict[str, str]]:
    """Opening messages, then one assistant move and one user answer per turn."""
    messages = [dict(m) for m in opening]
    for move, answer in zip(moves, answers):
        messages.append({"role": "assistant", "content": move})
        messages.append({"role": "user", "content": answer})
    return messages


def trajectory_rows(games: list[TeacherGame], teacher: str, split_of: dict[str, str], game: Game) -> list[dict]:
    """One ``trajectories.parquet`` row per game; ids are ``{teacher}-{game index:05d}``."""
    rows = []
    for index, g in enumerate(games):
        state = g.state
        answers = [t.answer for t in state.turns]
        rows.append(
            {
                "id": f"{teacher}-{index:05d}",
                "task": state.target.task,
                "target_id": state.target.id,
                "target": state.target.answer,
                "split": split_of[state.target.id],
                "teacher": teacher,
                "messages": game_messages(game.opening_messages(state.target), g.moves, answers),
                "moves": g.moves,
                "answers": answers,
                "statuses": g.statuses,
                "num_turns": state.num_turns,
                "max_turns": state.max_turns,
                "solved": bool(state.solved),
                "log_posterior": [float(x) for x in g.log_posterior],
            }
        )
    return rows


def schedule_targets(targets: list[Target], num_games: int, seed: int) -> list[Target]:
    """``num_games`` targets: a seeded shuffle of all targets, cycled as often as needed.

    The shuffle gets its own stream: with the bare ``seed`` it would repeat the split
    assignment's shuffle, so the first games would all fall on train targets and a run with
    fewer games than train targets would hold none out for calibration.
    """
    order = list(targets)
    random.Random(f"teacher-schedule/{seed}").shuffle(order)
    return [order[i % len(order)] for i in range(num_games)] if order else []


def play_teachers(data: DataConfig, game_config: GameConfig, table: TargetTable) -> tuple[list[dict], dict]:
    """Teacher games over the knowledge base: (rows, report). Rows are filtered by ``only_solved``."""
    from deltabelief.judges import get_judge  # the judges bring torch; a synthesis without teacher needs none

    nouns = game_config.kb_nouns or None
    kb = load_kb(nouns=nouns)
    game = build_game(game_config, "twenty_questions")
    judge = get_judge("kb", kb=kb)  # the same (possibly restricted) KB the teacher reasons with
    rng = random.Random(data.seed)
    teacher = make_teacher(data.teacher, kb, data.noise_epsilon, data.guess_below)
    scheduled = schedule_targets(table.targets, data.num_games, data.seed)
    games = play_teacher_games(teacher, scheduled, game, judge, kb, rng, data.repeat_epsilon)
    split_of = {t.id: s for t, s in zip(table.targets, table.splits)}
    rows = trajectory_rows(games, teacher.name, split_of, game)
    turns = [r["num_turns"] for r in rows]
    solved_turns = [r["num_turns"] for r in rows if r["solved"]]
    kept = [r for r in rows if r["solved"]] if data.only_solved else rows
    report = {
        "name": teacher.name,
        "noise_epsilon": data.noise_epsilon if teacher.name == "noisy" else 0.0,
        "only_solved": data.only_solved,
        "games_played": len(rows),
        "games_kept": len(kept),
        "games_rejected": len(rows) - len(kept),
        "solved_rate": len(solved_turns) / len(rows) if rows else 0.0,
        "mean_questions": sum(turns) / len(turns) if turns else 0.0,
        "mean_questions_solved": sum(solved_turns) / len(solved_turns) if solved_turns else 0.0,
        "max_questions": max(turns, default=0),
        "num_nouns": len(kb.nouns),
        "log2_nouns": math.log2(len(kb.nouns)),
    }
    logger.info(
        "%s teacher: %d games, mean questions %.2f vs log2(#nouns) %.2f",
        teacher.name, len(rows), report["mean_questions"], report["log2_nouns"],
    )
    return kept, report


def _check_replaceable(out: Path) -> None:
    """Refuse an ``out`` that holds anything a synthesis did not write (replacing it would delete that)."""
    if out.exists() and not out.is_dir():
        raise SynthesisError(f"--out {out} is a file, not a directory")
    ours = set(SYNTHESIS_FILES) | {f"{Path(name).stem}.validation.json" for name in SYNTHESIS_FILES}
    foreign = sorted(p.name for p in out.iterdir() if p.name not in ours) if out.is_dir() else []
    if foreign:
        raise SynthesisError(
            f"--out {out} holds files a synthesis did not write ({', '.join(foreign[:5])}); the new set replaces the "
            f"whole directory, so choose an empty or new one"
        )


def _replace_dir(staging: Path, out: Path) -> None:
    """Put ``staging`` where ``out`` is, in two renames; the old set is deleted only after."""
    old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
    if out.exists():
        out.rename(old)
    try:
        staging.rename(out)
    except BaseException:
        if old.exists():
            old.rename(out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def synthesize(data: DataConfig, game: GameConfig, out_dir: str | Path) -> SynthesisResult:
    """Write ``targets.parquet`` (and ``trajectories.parquet``) plus ``synthesis.json`` in ``out_dir``, as one set."""
    out = Path(out_dir)
    _check_replaceable(out)
    made = [d for d in (out.parent, *out.parent.parents) if not d.exists()]  # to remove again on failure
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=out.parent))
    try:
        result = _write_set(data, game, staging)
        _replace_dir(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for folder in made:  # deepest first
            if folder.exists() and not any(folder.iterdir()):
                folder.rmdir()
        raise
    return SynthesisResult(out / result.targets_path.name,
                           out / result.trajectories_path.name if result.trajectories_path else None,
                           out / result.report_path.name, result.report)


def _write_set(data: DataConfig, game: GameConfig, out: Path) -> SynthesisResult:
    """The files of one synthesis, written into ``out``; an empty result raises :class:`SynthesisError`."""
    import pandas as pd

    table = build_targets(data, game)
    if not table.targets:
        raise SynthesisError(f"source {data.source!r} gave no targets ({table.num_records} records read); "
                             "nothing was written")
    targets_path = out / "targets.parquet"
    write_parquet(table.frame(), targets_path, "targets")
    report: dict[str, Any] = {
        "source": data.source,
        "task": data.task,
        "seed": data.seed,
        "split_fractions": list(data.split),
        "num_records": table.num_records,
        "num_targets": len(table.targets),
        "splits": table.split_counts(),
        "num_duplicates": len(table.duplicates),
        "duplicates": table.duplicates,
    }
    trajectories_path = None
    if data.teacher != "none":
        kind, _ = parse_source(data.source)
        if kind != "kb":
            report["teacher"] = {"skipped": f"teacher games need --source kb, not {data.source!r}"}
            logger.warning("no teacher games: %s", report["teacher"]["skipped"])
        else:
            rows, report["teacher"] = play_teachers(data, game, table)
            if not rows:
                raise SynthesisError(
                    f"no teacher game was kept ({report['teacher']['games_played']} played, only_solved="
                    f"{data.only_solved}); nothing was written")
            # Flat copies for one-line printing (the CLI prints these two side by side).
            report["teacher_mean_questions"] = report["teacher"]["mean_questions"]
            report["log2_num_nouns"] = report["teacher"]["log2_nouns"]
            trajectories_path = out / "trajectories.parquet"
            write_parquet(pd.DataFrame(rows, columns=list(TRAJECTORY_COLUMNS)), trajectories_path, "trajectories")
    report_path = out / "synthesis.json"
    report_path.write_text(json.dumps(report, indent=2, sort_keys=True))
    return SynthesisResult(targets_path, trajectories_path, report_path, report)
