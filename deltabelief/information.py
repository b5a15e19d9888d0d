"""Information gained per question in knowledge-base games, measured with the exact posterior.

In a game judged from a knowledge base the nouns consistent with the answers so far, C_t,
are known exactly (``KnowledgeBase.consistent``). A question's information gain in bits is

    bits_t = log2(|C_{t−1}| / |C_t|),   t = 1..N,

so a perfect halving earns 1 bit, a question whose answer was already implied (or a
repeated, invalid or unanswerable move) earns 0, and a game over N₀ candidates needs at
least log2 N₀ bits in all. Solving reveals the target: C_t = {target} from then on.

This scale does not depend on how well the model's own beliefs are calibrated, so it moves
with question quality at any model size. Reported per game and per turn:

- ``bits_per_question``: mean bits_t over all questions asked;
- ``zero_gain_share``: share of questions with bits_t = 0;
- ``questions_to_solve``: turns used by solved games, beside the greedy teacher's on the same
  targets and the floor log2 N₀.
"""

from __future__ import annotations

import math
import random
from typing import TYPE_CHECKING, Sequence

import pandas as pd

from deltabelief.types import SOLVED_STATUSES

if TYPE_CHECKING:
    from deltabelief.data.knowledge_base import KnowledgeBase
    from deltabelief.trajectory import Trajectory

INFORMED_TASK = "twenty_questions"
"""The game whose answers the noun knowledge base gives exactly (C_t is defined for it)."""


def exact_knowledge_base(judge, task: str) -> "KnowledgeBase | None":
    """The knowledge base that answers ``task`` exactly under ``judge``, or None (no exact C_t)."""
    return getattr(judge, "kb", None) if task == INFORMED_TASK else None


def consistent_sizes(kb: "KnowledgeBase", moves: Sequence[str], statuses: Sequence[str], target: str) -> list[int]:
    """|C_t| for t = 0..N, exactly (ValueError naming the turn if the target drops out of C_t)."""
    if len(moves) != len(statuses):
        raise ValueError(f"{len(moves)} moves but {len(statuses)} statuses")
    consistent = list(kb.nouns)
    sizes = [len(consistent)]
    for turn, (move, status) in enumerate(zip(moves, statuses), start=1):
        if status in SOLVED_STATUSES:
            consistent = [target]
        else:
            consistent = kb.consistent([(move, status)], nouns=consistent)
        if kb.canonical(target) not in consistent:
            raise ValueError(f"target {target!r} is inconsistent with its answers after turn {turn}: {move!r} -> {status}")
        sizes.append(len(consistent))
    return sizes


def question_bits(kb: "KnowledgeBase", moves: Sequence[str], statuses: Sequence[str], target: str) -> list[float]:
    """bits_t = log2(|C_{t−1}| / |C_t|) for t = 1..N."""
    sizes = consistent_sizes(kb, moves, statuses, target)
    return [math.log2(before / after) for before, after in zip(sizes, sizes[1:])]


def information_rows(suite: str, kb: "KnowledgeBase", games: Sequence["Trajectory"]) -> list[dict]:
    """One row per question of every game: its bits and the candidate count before it."""
    rows = []
    for game in games:
        sizes = consistent_sizes(kb, [turn.move for turn in game.turns], game.statuses(), game.target.answer)
        for turn, (before, after) in enumerate(zip(sizes, sizes[1:]), start=1):
            rows.append({"suite": suite, "target_id": game.target.id, "sample": int(game.sample_index), "turn": turn,
                         "bits": math.log2(before / after), "candidates_before": before,
                         "solved_game": bool(game.solved)})
    return rows


def information_per_turn(rows: pd.DataFrame) -> pd.DataFrame:
    """Per suite and turn index: mean bits, share of zero-gain questions, questions asked."""
    grouped = rows.groupby(["suite", "turn"], sort=True)["bits"]
    table = grouped.agg(bits_mean="mean", zero_gain_share=lambda b: float((b == 0).mean()), count="count")
    return table.reset_index()


def teacher_questions_to_solve(kb: "KnowledgeBase", targets: Sequence[str], max_turns: int) -> float:
    """Mean turns the greedy teacher needs on ``targets`` (its unsolved games count ``max_turns``)."""
    from deltabelief.data.teachers import GreedyTeacher, play_teacher_games
    from deltabelief.config import GameConfig
    from deltabelief.games.base import build_game
    from deltabelief.types import Target
    from deltabelief.judges import get_judge

    if not targets:
        return math.nan
    game = build_game(GameConfig(), INFORMED_TASK, max_turns=max_turns)
    played = play_teacher_games(GreedyTeacher(kb), [Target(id=t, task=INFORMED_TASK, answer=t) for t in targets],
                                game, get_judge("kb", kb=kb), kb, random.Random(0))
    return sum(g.state.num_turns for g in played) / len(played)


def suite_information_metrics(suite: str, rows: pd.DataFrame, games: Sequence["Trajectory"], kb: "KnowledgeBase",
                        max_turns: int) -> dict[str, float]:
    """``{suite}/bits_per_question``, ``zero_gain_share``, ``questions_to_solve`` and the references."""
    solved = [g.num_turns for g in games if g.solved]
    targets = sorted({g.target.answer for g in games})
    return {
        f"{suite}/bits_per_question": float(rows["bits"].mean()) if len(rows) else math.nan,
        f"{suite}/zero_gain_share": float((rows["bits"] == 0).mean()) if len(rows) else math.nan,
        f"{suite}/questions_to_solve": sum(solved) / len(solved) if solved else math.nan,
        f"{suite}/teacher_questions_to_solve": teacher_questions_to_solve(kb, targets, max_turns),
        f"{suite}/log2_candidates": math.log2(len(kb.nouns)),
    }
