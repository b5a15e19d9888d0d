"""The words every layer shares: move statuses, chat messages, targets, and what passes between
a game and its judge. A module of plain types with no imports of the project, so that games,
judges, data, rewards and the trainer can all name them without importing each other.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from typing import Any, Protocol

# Every status a move can get, across all games. Contracts check against this set.
STATUSES = ("yes", "no", "answered", "invalid", "repeated", "unanswerable", "finished")
# Statuses that end the game in success.
SOLVED_STATUSES = ("finished",)

Message = dict[str, str]


@dataclass(frozen=True, init=False)
class Target:
    """One hidden target (a secret word, a city, a scenario with a culprit, ...)."""

    id: str
    task: str
    answer: str
    """The hidden answer itself, as the questioner must name it (the word, 'City, Country', ...).
    Files keep it in their 'target' column."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Task context for the judge (city facts, scenario text, persona, ...)."""
    messages: tuple[Message, ...] = ()
    """Opening messages shipped with the data; empty means the game writes its own."""

    def __init__(self, id: str, task: str, answer: str | None = None, extra: dict[str, Any] | None = None,
                 messages: tuple[Message, ...] = (), *, target: str | None = None):
        if target is not None:  # the field's old name, still accepted from code written against it
            if answer is not None:
                raise TypeError("Target takes answer= or its old name target=, not both")
            warnings.warn("Target(target=...) is deprecated: the field is now 'answer'", DeprecationWarning,
                          stacklevel=2)
            answer = target
        if answer is None:
            raise TypeError("Target needs its answer (the hidden word, city, ...)")
        for name, value in (("id", id), ("task", task), ("answer", answer), ("extra", extra or {}),
                            ("messages", messages)):
            object.__setattr__(self, name, value)

    def extra_json(self) -> str:
        return json.dumps(self.extra, sort_keys=True)


@dataclass(frozen=True)
class JudgeRequest:
    task: str
    target: Target
    move: str
    history: tuple[tuple[str, str], ...] = ()
    """Earlier (move, answer) pairs."""
    instructions: str = ""
    """System prompt for LLM judges, written by the game."""
    labels: tuple[str, ...] = ()
    """Labels the judge may answer with (LLM judges put one inside <answer>...</answer>)."""


@dataclass(frozen=True)
class JudgeReply:
    label: str
    """One of the request's labels, lower case ('invalid' when unparseable)."""
    text: str = ""
    """Free-text reply for role-play games; empty for label-only games."""
    raw: str = ""
    parsed: bool = True
    details: dict[str, Any] = field(default_factory=dict)


class Judge(Protocol):
    """Who answers the questioner: labels a batch of moves (built by name in :mod:`deltabelief.judges`)."""

    name: str

    def answer_batch(self, requests: list[JudgeRequest]) -> list[JudgeReply]: ...
