"""Who answers the questioner: one protocol, chosen by name."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Protocol

if TYPE_CHECKING:  # games import judges.base at runtime; keep this one-way
    from deltabelief.games.base import Target


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
    name: str

    def answer_batch(self, requests: list[JudgeRequest]) -> list[JudgeReply]: ...


_JUDGES: dict[str, Callable[..., Judge]] = {}


def register_judge(name: str) -> Callable:
    def wrap(factory: Callable[..., Judge]) -> Callable[..., Judge]:
        if name in _JUDGES:
            raise ValueError(f"judge {name!r} is already registered")
        _JUDGES[name] = factory
        return factory

    return wrap


def get_judge(name: str, **kwargs: Any) -> Judge:
    import deltabelief.judges  # noqa: F401  (registers the built-in judges)

    if name not in _JUDGES:
        raise KeyError(f"unknown judge {name!r}; judges: {sorted(_JUDGES)}")
    return _JUDGES[name](**kwargs)


def judge_names() -> list[str]:
    import deltabelief.judges  # noqa: F401

    return sorted(_JUDGES)
