"""Interaction scaling: success against the turn budget, from one set of games.

Default (``EvalConfig.replay_budgets = False``): every game is played once with the
largest budget B, and its result at a smaller budget b is read off its first b turns:
solved within b when it was solved on a turn t ≤ b (a game is solved on its last
turn, so this is ``solved and num_turns <= b``); turns, last status and status counts
are those of the first b turns.

Why this is valid: the rules, the judge and the sampling of turn t depend only on the
conversation before it, never on the budget, with one exception: a prompt that states
the number of questions. Targets loaded from data files (reference parquet, PAPRIKA,
``targets.parquet``) carry their own prompts, which state a fixed count whatever the
budget, so truncation is exact for them. Prompts the games write themselves state the
largest budget B. Set ``replay_budgets`` to play every budget separately with its own
prompt (costs sum(budgets) / max(budgets) times more).

Results-table columns (one row per game and budget; the ``eval`` data contract):
suite, target_id, target, sample, budget, num_turns, max_turns (= budget), solved,
last_status, invalid_turns, repeated_turns, unanswerable_turns, rating.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import pandas as pd

from deltabelief.trajectory import Trajectory

RESULT_COLUMNS = (
    "suite", "target_id", "target", "sample", "budget", "num_turns", "max_turns", "solved",
    "last_status", "invalid_turns", "repeated_turns", "unanswerable_turns", "rating",
)


@dataclass(frozen=True)
class Outcome:
    """A game as it stood after its first ``budget`` turns."""

    num_turns: int
    solved: bool
    last_status: str
    invalid_turns: int
    repeated_turns: int
    unanswerable_turns: int


def truncate(statuses: Sequence[str], solved: bool, budget: int) -> Outcome:
    """The outcome of a game with these per-turn ``statuses`` had it been cut after ``budget`` turns."""
    if budget < 1:
        raise ValueError(f"budget must be at least 1, got {budget}")
    if not statuses:
        raise ValueError("a game with no turns has no outcome")
    kept = list(statuses[:budget])
    return Outcome(
        num_turns=len(kept),
        solved=bool(solved) and len(statuses) <= budget,  # solved on its last turn, within the budget
        last_status=kept[-1],
        invalid_turns=kept.count("invalid"),
        repeated_turns=kept.count("repeated"),
        unanswerable_turns=kept.count("unanswerable"),
    )


def game_row(suite: str, trajectory: Trajectory, budget: int, rating: float = math.nan) -> dict:
    """One results-table row for ``trajectory`` read at ``budget``."""
    outcome = truncate(trajectory.statuses(), trajectory.solved, budget)
    return {
        "suite": suite,
        "target_id": trajectory.target.id,
        "target": trajectory.target.answer,
        "sample": int(trajectory.sample_index),
        "budget": int(budget),
        "num_turns": outcome.num_turns,
        "max_turns": int(budget),
        "solved": outcome.solved,
        "last_status": outcome.last_status,
        "invalid_turns": outcome.invalid_turns,
        "repeated_turns": outcome.repeated_turns,
        "unanswerable_turns": outcome.unanswerable_turns,
        "rating": float(rating),
    }


def results_frame(rows: list[dict]) -> pd.DataFrame:
    """Rows -> the results table with the contract's column order and dtypes."""
    frame = pd.DataFrame(rows, columns=list(RESULT_COLUMNS))
    return frame.astype(
        {
            "suite": str, "target_id": str, "target": str, "sample": "int64", "budget": "int64",
            "num_turns": "int64", "max_turns": "int64", "solved": bool, "last_status": str,
            "invalid_turns": "int64", "repeated_turns": "int64", "unanswerable_turns": "int64",
            "rating": "float64",
        }
    )


PlayBudget = Callable[[int], list[Trajectory]]
"""Plays every game of a suite with the given turn budget."""


def play_budgets(play: PlayBudget, budgets: Sequence[int], replay: bool = False) -> dict[int, list[Trajectory]]:
    """Trajectories to read each budget from: ``{budget: trajectories}``.

    ``replay=False`` calls ``play`` once with the largest budget and maps every budget to
    those games (read them with :func:`game_row`); ``replay=True`` calls it once per budget.
    """
    ordered = sorted(set(int(b) for b in budgets))
    if not ordered or ordered[0] < 1:
        raise ValueError(f"budgets must be positive turn counts, got {list(budgets)}")
    if replay:
        return {b: play(b) for b in ordered}
    games = play(ordered[-1])
    return {b: games for b in ordered}


def scaling_rows(suite: str, played: dict[int, list[Trajectory]]) -> list[dict]:
    """Results-table rows for every budget from :func:`play_budgets`' output."""
    return [game_row(suite, t, budget) for budget, games in sorted(played.items()) for t in games]
