"""A scripted judge for tests: answers from a mapping or a function, never from a model.

``answers`` is either

- a mapping from move text to a label or a ``(label, text)`` pair; keys are compared
  after lower-casing and keeping words only, so ``"Is it alive?"`` and
  ``"is it  ALIVE"`` are the same key; or
- a callable ``(JudgeRequest) -> label | (label, text)``.

A move missing from the mapping gets ``default`` (``None``: raise a KeyError naming the
move). A label that is not one of the request's labels comes back the way an LLM
judge's unparseable reply does: ``JudgeReply("invalid", raw=<label>, parsed=False)``.
Every request is kept in ``self.requests`` so tests can inspect what the game sent.
"""

from __future__ import annotations

import re
from typing import Callable, Mapping, Union

from deltabelief.config import JudgeConfig
from deltabelief.judges.base import register_judge
from deltabelief.types import JudgeReply, JudgeRequest

NAME = "scripted"

Script = Union[str, tuple[str, str]]
Answers = Union[Mapping[str, Script], Callable[[JudgeRequest], Script]]

_WORD = re.compile(r"[a-z0-9]+")


def _key(move: str) -> str:
    return " ".join(_WORD.findall(move.lower()))


class ScriptedJudge:
    name = NAME

    def __init__(self, answers: Answers | None = None, default: str | None = "no"):
        self._default = default
        if callable(answers):
            self._fn: Callable[[JudgeRequest], Script] | None = answers
            self._table: dict[str, Script] = {}
        else:
            self._fn = None
            self._table = {_key(move): script for move, script in (answers or {}).items()}
        self.requests: list[JudgeRequest] = []
        self.stats = {"calls": 0, "batches": 0, "unanswerable": 0}

    def answer_batch(self, requests: list[JudgeRequest]) -> list[JudgeReply]:
        self.requests.extend(requests)
        replies = [self._reply(request, self._script(request)) for request in requests]
        self.stats["batches"] += 1
        self.stats["calls"] += len(replies)
        self.stats["unanswerable"] += sum(r.label == "unanswerable" for r in replies)
        return replies

    def _script(self, request: JudgeRequest) -> Script:
        if self._fn is not None:
            return self._fn(request)
        key = _key(request.move)
        if key in self._table:
            return self._table[key]
        if self._default is None:
            raise KeyError(
                f"scripted judge has no answer for move {request.move!r}; scripted moves: {sorted(self._table)}"
            )
        return self._default

    @staticmethod
    def _reply(request: JudgeRequest, script: Script) -> JudgeReply:
        raw_label, text = (script, "") if isinstance(script, str) else script
        label = raw_label.strip().lower()
        if request.labels and label not in request.labels:
            return JudgeReply("invalid", text=text, raw=raw_label, parsed=False)
        return JudgeReply(label, text=text, raw=raw_label, parsed=True)


@register_judge(NAME)
def make_scripted_judge(
    config: JudgeConfig | None = None,
    answers: Answers | None = None,
    default: str | None = "no",
) -> ScriptedJudge:
    """A judge that replies from ``answers`` (mapping or callable); ``config`` is accepted and unused."""
    return ScriptedJudge(answers, default)
