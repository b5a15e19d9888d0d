"""The knowledge-base judge: exact, deterministic answers on CPU for Twenty Questions and Guess My City.

It answers from :mod:`deltabelief.data.knowledge_base`: a predicate question gets the
stored truth, a guess is ``finished`` for the secret (or a synonym) and ``no`` for any
other known noun, and everything else is ``unanswerable`` with a message saying why
(the game shows that message and penalises the turn like an invalid one by default,
see ``JudgeConfig.unanswerable_as_invalid``).

Guess My City is answered from the city knowledge base (:mod:`deltabelief.data.cities`) in the
game's labels: a yes/no question gets ``answered`` with the text 'Yes.' or 'No.', a guess of the
city ``goal reached``, a guess of another city 'No.', and everything else ``invalid`` with the
message saying why (the game has no 'unanswerable' label).

Targets must be nouns (cities) of the knowledge bases; free-form targets need an LLM judge
(``--judge local`` or ``--judge openai``).
"""

from __future__ import annotations

import logging
from typing import Sequence

from deltabelief.config import JudgeConfig
from deltabelief.data import cities
from deltabelief.data.knowledge_base import KnowledgeBase, KnowledgeBaseError, load_kb
from deltabelief.judges.base import register_judge
from deltabelief.types import JudgeReply, JudgeRequest

logger = logging.getLogger(__name__)

NAME = "kb"
SUPPORTED_TASKS = ("twenty_questions", cities.TASK)
CITY_LABELS = {"yes": ("answered", cities.YES), "no": ("answered", cities.NO), "finished": ("goal reached", "")}


class KBJudge:
    """Answers a batch of Twenty Questions moves from a :class:`KnowledgeBase`.

    ``stats`` counts requests answered (``calls``), ``answer_batch`` invocations
    (``batches``) and unanswerable moves (``unanswerable``).
    """

    name = NAME

    def __init__(self, kb: KnowledgeBase, config: JudgeConfig | None = None, city_kb: KnowledgeBase | None = None):
        self.kb = kb
        self.config = config or JudgeConfig(backend="kb")
        self.stats = {"calls": 0, "batches": 0, "unanswerable": 0}
        self._city_kb = city_kb

    @property
    def city_kb(self) -> KnowledgeBase:
        """The city knowledge base, loaded on the first Guess My City request."""
        if self._city_kb is None:
            self._city_kb = cities.load_city_kb()
        return self._city_kb

    def answer_batch(self, requests: list[JudgeRequest]) -> list[JudgeReply]:
        replies = [self._answer(request) for request in requests]
        self.stats["batches"] += 1
        self.stats["calls"] += len(replies)
        self.stats["unanswerable"] += sum(r.label == "unanswerable" for r in replies)
        return replies

    def _answer(self, request: JudgeRequest) -> JudgeReply:
        if request.task not in SUPPORTED_TASKS:
            raise ValueError(
                f"the kb judge answers only {list(SUPPORTED_TASKS)}, not task {request.task!r} "
                f"(target id {request.target.id!r}); use --judge local or --judge openai"
            )
        if request.task == cities.TASK:
            return self._answer_city(request)
        secret = request.target.answer
        try:
            status, message = self.kb.answer(secret, request.move)
        except KnowledgeBaseError as exc:
            raise ValueError(
                f"target {secret!r} (id {request.target.id!r}) is not a noun of the knowledge base "
                f"({len(self.kb.nouns)} nouns): {exc}. The kb judge only knows its own nouns; "
                "use --judge local or --judge openai for free-form targets"
            ) from exc
        parsed = self.kb.parse(request.move)
        details = {"kind": parsed.kind, "name": parsed.name}
        if status == "unanswerable" and request.labels and "unanswerable" not in request.labels:
            # The game has no 'unanswerable' label: report it the way the game penalises it.
            return JudgeReply("invalid", text=message, raw="", parsed=True, details=details)
        text = message if status == "unanswerable" else ""
        return JudgeReply(status, text=text, raw="", parsed=True, details=details)

    def _answer_city(self, request: JudgeRequest) -> JudgeReply:
        secret = cities.secret_city(self.city_kb, request.target)
        status, message = self.city_kb.answer(secret, request.move)
        parsed = self.city_kb.parse(request.move)
        details = {"kind": parsed.kind, "name": parsed.name}
        if status == "unanswerable":
            return JudgeReply("invalid", text=message, raw="", parsed=True, details=details)
        label, text = CITY_LABELS[status]
        return JudgeReply(label, text=text, raw="", parsed=True, details=details)


@register_judge(NAME)
def make_kb_judge(
    config: JudgeConfig | None = None,
    kb: KnowledgeBase | None = None,
    nouns: Sequence[str] | None = None,
) -> KBJudge:
    """The kb judge over ``kb`` (default: the shipped KB), restricted to ``nouns`` if given."""
    kb = kb if kb is not None else load_kb()
    if nouns:
        kb = kb.subset(nouns)
    logger.info("kb judge over %r", kb)
    return KBJudge(kb, config)
