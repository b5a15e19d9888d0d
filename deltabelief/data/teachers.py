"""Scripted teachers that play Twenty Questions over the knowledge base, and the exact posterior.

Both teachers play through the real game and the knowledge-base judge (``play_moves``), so
every stored answer and status is what the RL environment would say.

- ``greedy``: among the nouns still consistent with the answers, ask the predicate whose yes/no
  split has the highest entropy H(k/n) (ties: knowledge-base order); guess (``Is it a dog?``)
  when one noun remains, when no predicate splits the rest, or on the game's last turn
  (then the first noun left: a question there could no longer win). With ``guess_below`` k > 1
  it stops splitting once at most k nouns remain and guesses them one by one in a random
  order. The wrong guesses are what lets a warm-started model solve held-out targets: a
  target that no training game ends on still appears, as a failed guess, in the games of
  the training targets that share its last nouns.
- ``noisy``: with probability ε ask a uniformly random predicate, repeats allowed (the game
  answers 'repeated'), otherwise play greedy. It leaves a warm-started model room to improve.

Exact posterior: after t answers the consistent set C_t is the set of nouns that agree with
every (move, status) so far (``KnowledgeBase.consistent``), and log b*_t = −log|C_t| (nats),
t = 0..N. A 'finished' move reveals the target, so C_t = {target} and log b*_t = 0 from there.

Shapes: ``P`` predicates, ``V`` nouns; the holds matrix is [V, P] booleans.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, Sequence

import numpy as np

from deltabelief.games.base import Game, GameState, play_moves
from deltabelief.types import SOLVED_STATUSES, Judge, Target

if TYPE_CHECKING:
    from deltabelief.data.knowledge_base import KnowledgeBase

TEACHERS = ("greedy", "noisy")


def consistent_nouns(kb: "KnowledgeBase", moves: Sequence[str], statuses: Sequence[str], target: str) -> list[str]:
    """C_t: the nouns consistent with the (move, status) history; {target} once it is found."""
    if len(moves) != len(statuses):
        raise ValueError(f"{len(moves)} moves but {len(statuses)} statuses")
    if any(s in SOLVED_STATUSES for s in statuses):
        return [target]
    return list(kb.consistent(list(zip(moves, statuses))))


def exact_log_posterior(kb: "KnowledgeBase", moves: Sequence[str], statuses: Sequence[str], target: str) -> list[float]:
    """log b*_t = −log|C_t| for t = 0..N (N = len(moves)); raises if the target ever drops out of C_t."""
    out = []
    for t in range(len(moves) + 1):
        nouns = consistent_nouns(kb, moves[:t], statuses[:t], target)
        if target not in nouns:
            raise ValueError(
                f"target {target!r} is inconsistent with its own answers after turn {t}: "
                f"{list(zip(moves[:t], statuses[:t]))}"
            )
        out.append(0.0 - math.log(len(nouns)))
    return out


def split_entropy(num_yes: np.ndarray, num: int) -> np.ndarray:
    """Entropy in bits of a yes/no split: H(p) with p = num_yes / num. [P] -> [P]."""
    p = num_yes / num
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -(p * np.log2(p) + (1 - p) * np.log2(1 - p))
    return np.nan_to_num(h, nan=0.0)  # p in {0, 1}: no information


class Teacher(Protocol):
    name: str

    def next_move(self, consistent: list[str], rng: random.Random, turns_left: int = 20) -> str:
        """The next question given the nouns still consistent with the answers."""


class GreedyTeacher:
    """Ask the most informative predicate; guess when one noun remains."""

    name = "greedy"

    def __init__(self, kb: "KnowledgeBase", guess_below: int = 1):
        if guess_below < 1:
            raise ValueError(f"guess_below must be at least 1, got {guess_below}")
        self.kb = kb
        self.guess_below = guess_below
        self.row = {noun: i for i, noun in enumerate(kb.nouns)}
        # holds[v, p] = does predicate p hold for noun v.  [V, P]
        self.holds = np.array([[kb.holds(n, p.name) for p in kb.predicates] for n in kb.nouns], dtype=bool)

    def next_move(self, consistent: list[str], rng: random.Random, turns_left: int = 20) -> str:
        if not consistent:
            raise ValueError("no noun is consistent with the answers; the game cannot be played greedily")
        if 1 < len(consistent) <= self.guess_below:
            return self.kb.guess_question(rng.choice(consistent))
        if len(consistent) > 1 and turns_left > 1:
            rows = self.holds[[self.row[n] for n in consistent]]  # [C, P]
            gain = split_entropy(rows.sum(axis=0), len(consistent))  # [P]
            best = int(np.argmax(gain))  # first maximum: knowledge-base order breaks ties
            if gain[best] > 0:
                return self.kb.predicates[best].question
        return self.kb.guess_question(consistent[0])


class NoisyTeacher(GreedyTeacher):
    """With probability ε a uniformly random predicate (repeats allowed), else greedy."""

    name = "noisy"

    def __init__(self, kb: "KnowledgeBase", epsilon: float, guess_below: int = 1):
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError(f"noise_epsilon must be in [0, 1], got {epsilon}")
        super().__init__(kb, guess_below)
        self.epsilon = epsilon

    def next_move(self, consistent: list[str], rng: random.Random, turns_left: int = 20) -> str:
        if rng.random() < self.epsilon:
            return rng.choice(self.kb.predicates).question
        return super().next_move(consistent, rng, turns_left)


def make_teacher(name: str, kb: "KnowledgeBase", epsilon: float = 0.3, guess_below: int = 1) -> Teacher:
    if name == "greedy":
        return GreedyTeacher(kb, guess_below)
    if name == "noisy":
        return NoisyTeacher(kb, epsilon, guess_below)
    raise KeyError(f"unknown teacher {name!r}; teachers: {list(TEACHERS)}")


@dataclass
class TeacherGame:
    """One finished teacher game and its exact posterior, log b*_t for t = 0..N."""

    state: GameState
    log_posterior: list[float] = field(default_factory=list)

    @property
    def moves(self) -> list[str]:
        return [t.move for t in self.state.turns]

    @property
    def statuses(self) -> list[str]:
        return [t.status for t in self.state.turns]


def _maybe_repeat(game: TeacherGame, move: str, rng: random.Random, epsilon: float) -> str:
    """With probability ``epsilon``, one of the game's answered questions again instead of ``move``."""
    asked = [m for m, s in zip(game.moves, game.statuses) if s in ("yes", "no")]
    if asked and game.state.max_turns - game.state.num_turns > 1 and rng.random() < epsilon:
        return rng.choice(asked)
    return move


def play_teacher_games(
    teacher: Teacher,
    targets: list[Target],
    game: Game,
    judge: "Judge",
    kb: "KnowledgeBase",
    rng: random.Random,
    repeat_epsilon: float = 0.0,
) -> list[TeacherGame]:
    """Play one game per target, all games in step (one judge batch per turn).

    With ``repeat_epsilon`` > 0 a turn re-asks one of the game's earlier questions with that
    probability (the game answers 'repeated'), so the games show how to go on after a repeat;
    the warm start learns from what follows but never imitates the repeat itself
    (``sft.skip_rejected_moves``).
    """
    if not 0.0 <= repeat_epsilon < 1.0:
        raise ValueError(f"repeat_epsilon must be in [0, 1), got {repeat_epsilon}")
    games = [TeacherGame(state=game.new_state(t)) for t in targets]
    consistent: list[list[str]] = []
    for g in games:
        nouns = consistent_nouns(kb, [], [], g.state.target.answer)
        consistent.append(nouns)
        g.log_posterior.append(0.0 - math.log(len(nouns)))
    while True:
        active = [i for i, g in enumerate(games) if not g.state.done]
        if not active:
            return games
        moves = [teacher.next_move(consistent[i], rng, games[i].state.max_turns - games[i].state.num_turns)
                 for i in active]
        if repeat_epsilon > 0:  # draws only then, so games without repeats keep their random stream
            moves = [_maybe_repeat(games[i], move, rng, repeat_epsilon) for i, move in zip(active, moves)]
        play_moves(game, judge, [games[i].state for i in active], moves)
        for i in active:
            g = games[i]
            secret = g.state.target.answer
            consistent[i] = consistent_nouns(kb, g.moves, g.statuses, secret)
            if secret not in consistent[i]:
                raise ValueError(
                    f"target {secret!r} ({g.state.target.id}) is inconsistent with its own answers: "
                    f"{list(zip(g.moves, g.statuses))}"
                )
            g.log_posterior.append(0.0 - math.log(len(consistent[i])))
