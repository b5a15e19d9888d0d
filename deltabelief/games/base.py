"""The interaction protocol every game follows.

A game owns the rules; a judge only labels a move. One move is played in three
steps so that judge calls can be batched across many games:

1. ``game.precheck(state, move)`` applies rules that need no judge
   (format, length, repeats) and returns a final :class:`StepResult` or ``None``;
2. ``game.judge_request(state, move)`` builds the :class:`~deltabelief.judges.base.JudgeRequest`;
3. ``game.resolve(state, move, reply)`` applies rule corrections to the judge's
   label and returns the :class:`StepResult`.

:func:`play_moves` runs the three steps for a batch of games.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Protocol

if TYPE_CHECKING:
    from deltabelief.judges.base import Judge, JudgeReply, JudgeRequest

# Every status a move can get, across all games. Contracts check against this set.
STATUSES = ("yes", "no", "answered", "invalid", "repeated", "unanswerable", "finished")
# Statuses that end the game in success.
SOLVED_STATUSES = ("finished",)

Message = dict[str, str]


@dataclass(frozen=True)
class Target:
    """One hidden target (a secret word, a city, a scenario with a culprit, ...)."""

    id: str
    task: str
    target: str
    extra: dict[str, Any] = field(default_factory=dict)
    """Task context for the judge (city facts, scenario text, persona, ...)."""
    messages: tuple[Message, ...] = ()
    """Opening messages shipped with the data; empty means the game writes its own."""

    def extra_json(self) -> str:
        return json.dumps(self.extra, sort_keys=True)


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

    def judge_request(self, state: GameState, move: str) -> "JudgeRequest": ...

    def resolve(self, state: GameState, move: str, reply: "JudgeReply") -> StepResult: ...


def apply_step(state: GameState, move: str, result: StepResult) -> None:
    """Record a move and its result; end the game on success or when turns run out."""
    if state.done:
        raise RuntimeError(f"game for target {state.target.id!r} is over; no more moves")
    state.turns.append(Turn(move=move, answer=result.text, status=result.status))
    if result.status in SOLVED_STATUSES:
        state.solved = True
    state.done = result.done or state.solved or state.num_turns >= state.max_turns


def play_moves(game: Game, judge: "Judge", states: list[GameState], moves: list[str]) -> list[StepResult]:
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


async def play_move_async(game: Game, answer: Callable[["JudgeRequest"], Awaitable["JudgeReply"]],
                          state: GameState, move: str) -> StepResult:
    """:func:`play_moves` for one game on an event loop: ``answer`` is an async judge call."""
    result = game.precheck(state, move)
    if result is None:
        result = game.resolve(state, move, await answer(game.judge_request(state, move)))
    apply_step(state, move, result)
    return result


# ---------------------------------------------------------------- registry

_GAMES: dict[str, Callable[..., Game]] = {}


def register_game(name: str) -> Callable:
    def wrap(factory: Callable[..., Game]) -> Callable[..., Game]:
        if name in _GAMES:
            raise ValueError(f"game {name!r} is already registered")
        _GAMES[name] = factory
        return factory

    return wrap


def get_game(name: str, **kwargs: Any) -> Game:
    import deltabelief.games  # noqa: F401  (registers the built-in games)

    if name not in _GAMES:
        raise KeyError(f"unknown game {name!r}; games: {sorted(_GAMES)}")
    return _GAMES[name](**kwargs)


def game_names() -> list[str]:
    import deltabelief.games  # noqa: F401

    return sorted(_GAMES)
