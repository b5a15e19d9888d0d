"""Who answers the questioner: judges are chosen by name from one registry.

The judge protocol and what passes through it (:class:`~deltabelief.types.Judge`,
:class:`~deltabelief.types.JudgeRequest`, :class:`~deltabelief.types.JudgeReply`) live in
:mod:`deltabelief.types`, so that games name them without importing the judges.
"""

from __future__ import annotations

from typing import Any, Callable

from deltabelief.registry import Registry
from deltabelief.types import Judge

JUDGES: Registry[Callable[..., Judge]] = Registry("judge")
"""Judge factories by backend name; importing :mod:`deltabelief.judges` registers the built-in ones."""
register_judge = JUDGES.register


def get_judge(name: str, **kwargs: Any) -> Judge:
    """The judge registered as ``name``, built with ``kwargs`` (its factory's arguments)."""
    return JUDGES.get(name)(**kwargs)
