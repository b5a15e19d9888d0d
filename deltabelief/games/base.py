"""The interaction protocol every game follows.

A game owns the rules; a judge only labels a move. One move is played in three
steps so that judge calls can be batched across many games:

1. ``game.precheck(state, move)`` applies rules that need no judge
   (format, length, repeats) and returns a final :class:`StepResult` or ``None``;
2. ``game.judge_request(state, move)`` builds the :class:`~deltabelief.types.JudgeRequest`;
3. ``game.resolve(state, move, reply)`` applies rule corrections to the judge's
   label and returns the :class:`StepResult`.

:func:`play_moves` runs the three steps for a batch of games.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Hashable, Protocol, Sequence

from deltabelief.config import GameConfig
from deltabelief.registry import Registry
from deltabelief.types import SOLVED_STATUSES, Judge, JudgeReply, JudgeRequest, Message, Target


@dataclass
class Turn:
    move: str
    answer: str
    status: str


@dataclass
class GameState:
    target: Target
    max_turns: int
    turns: list[Turn] = field(default_factory=list)
    done: bool = False
    solved: bool = False

    @property
    def num_turns(self) -> int:
        return len(self.turns)

    def history(self) -> tuple[tuple[str, str], ...]:
        return tuple((t.move, t.answer) for t in self.turns)


@dataclass(frozen=True)
class StepResult:
    text: str
    """What the questioner sees as the user's reply."""
    status: str
    done: bool


@dataclass
class GameRecord:
    """Everything that happened in one game."""

    target: Target
    turns: list[Turn]
    solved: bool

    @classmethod
    def from_state(cls, state: GameState) -> "GameRecord":
        return cls(target=state.target, turns=list(state.turns), solved=state.solved)


class Game(Protocol):
    name: str
    max_turns: int

    def opening_messages(self, target: Target) -> list[Message]:
        """System prompt and first user prompt for the questioner."""

    def new_state(self, target: Target) -> GameState: ...

    def precheck(self, state: GameState, move: str) -> StepResult | None: ...

    def judge_request(self, state: GameState, move: str) -> JudgeRequest: ...

    def resolve(self, state: GameState, move: str, reply: JudgeReply) -> StepResult: ...

    def step_states(self, turns: Sequence[tuple[str, str]]) -> list[Hashable]:
        """The state before each of one game's (move, status) turns, for estimators that compare
        moves taken from the same state (GiGPO): equal states mean the same situation."""


def names_phrase(text: str, phrase: str, normalize: Callable[[str], str]) -> bool:
    """True when ``phrase`` occurs in ``text`` as whole words, both normalized by ``normalize``
    (which must reduce them to words of [a-z0-9] separated by single spaces)."""
    words = normalize(phrase)
    if not words:
        return False
    return re.search(rf"(?<![a-z0-9]){re.escape(words)}(?![a-z0-9])", normalize(text)) is not None


def history_states(turns: Sequence[tuple[str, str]], normalize: Callable[[str], str]) -> list[frozenset]:
    """States from the play alone: before each move, the set of (normalized move, status) pairs
    played so far (the order of earlier questions does not change what is known)."""
    seen, states = [], []
    for move, status in turns:
        states.append(frozenset(seen))
        seen.append((normalize(move), status))
    return states


def apply_step(state: GameState, move: str, result: StepResult) -> None:
    """Record a move and its result; end the game on success or when turns run out."""
    if state.done:
        raise RuntimeError(f"game for target {state.target.id!r} is over; no more moves")
    state.turns.append(Turn(move=move, answer=result.text, status=result.status))
    if result.status in SOLVED_STATUSES:
        state.solved = True
    state.done = result.done or state.solved or state.num_turns >= state.max_turns


def play_moves(game: Game, judge: Judge, states: list[GameState], moves: list[str]) -> list[StepResult]:
    """Play one move in each game, calling the judge once for all moves that need it."""
    if len(states) != len(moves):
        raise ValueError(f"{len(states)} games but {len(moves)} moves")
    results: list[StepResult | None] = [game.precheck(s, m) for s, m in zip(states, moves)]
    pending = [i for i, r in enumerate(results) if r is None]
    if pending:
        replies = judge.answer_batch([game.judge_request(states[i], moves[i]) for i in pending])
        for i, reply in zip(pending, replies):
            results[i] = game.resolve(states[i], moves[i], reply)
    for state, move, result in zip(states, moves, results):
        apply_step(state, move, result)
    return results  # type: ignore[return-value]


async def play_move_async(game: Game, answer: Callable[[JudgeRequest], Awaitable[JudgeReply]],
                          state: GameState, move: str) -> StepResult:
    """:func:`play_moves` for one game on an event loop: ``answer`` is an async judge call."""
    result = game.precheck(state, move)
    if result is None:
        result = game.resolve(state, move, await answer(game.judge_request(state, move)))
    apply_step(state, move, result)
    return result


# ---------------------------------------------------------------- registry

GAMES: Registry[Callable[..., Game]] = Registry("game")
"""Game classes by task name; importing :mod:`deltabelief.games` registers the built-in ones."""
register_game = GAMES.register


def get_game(name: str, **kwargs) -> Game:
    """The game registered as ``name``, built with ``kwargs`` (its constructor's arguments)."""
    return GAMES.get(name)(**kwargs)


def prompt_candidates(config: GameConfig) -> tuple[str, ...]:
    """The nouns the Twenty Questions prompt lists (``game.kb_nouns``, alphabetical): none
    unless ``candidates_in_prompt``."""
    return tuple(sorted(config.kb_nouns)) if config.candidates_in_prompt else ()


def build_game(config: GameConfig, task: str | None = None, max_turns: int | None = None) -> Game:
    """The game a config describes: ``task`` (default ``config.task``) under the rules of
    ``config``; ``max_turns`` replaces ``config.max_turns`` (an evaluation budget)."""
    task = task or config.task
    turns = max_turns or config.max_turns
    if task == "twenty_questions":
        return get_game(task, max_turns=turns, min_question_chars=config.min_question_chars,
                        max_question_chars=config.max_question_chars, candidates=prompt_candidates(config))
    return get_game(task, max_turns=turns)
