"""Judges for code that runs on an asyncio event loop (verl's agent-loop workers).

:class:`AsyncOpenAIJudge` sends one chat-completions request per move with ``httpx``'s async client
on the caller's event loop: no thread pool, and at most ``judge.max_concurrency`` requests in flight
per event loop (an ``asyncio.Semaphore``; the connection pool is sized to match). Retries, errors
and the request body are those of the blocking 'openai' judge (:mod:`.openai_compat`).

:class:`InlineJudge` adapts the in-process judges ('kb', 'scripted'): they answer in microseconds,
so they run inline on the loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Callable, Protocol

import httpx

from deltabelief.config import JudgeConfig
from deltabelief.judges.openai_compat import (
    JudgeResponseError, JudgeUnavailableError, chat_payload, http_endpoint, is_retryable_status,
    response_content,
)
from deltabelief.judges.parsing import build_messages, parse_reply
from deltabelief.types import Judge, JudgeReply, JudgeRequest

log = logging.getLogger(__name__)

_BODY_PREVIEW_CHARS = 300


class AsyncJudge(Protocol):
    async def answer(self, request: JudgeRequest) -> JudgeReply: ...


class InlineJudge:
    """An in-process judge answering one request at a time on the event loop."""

    def __init__(self, judge: Judge):
        self.judge = judge

    async def answer(self, request: JudgeRequest) -> JudgeReply:
        return self.judge.answer_batch([request])[0]


class AsyncOpenAIJudge:
    """The 'openai' judge on an event loop, with bounded concurrency.

    ``stats``: ``calls``, ``unparseable``, ``attempts``, ``retries`` (as :class:`.OpenAIJudge`) and
    ``max_in_flight``, the most requests that were ever in flight at once.
    """

    def __init__(self, config: JudgeConfig, transport: httpx.AsyncBaseTransport | None = None):
        self.config = config
        self.url, self._api_key = http_endpoint(config)
        self._transport = transport
        self._headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self.in_flight = 0
        self.stats: dict[str, int] = {"calls": 0, "unparseable": 0, "attempts": 0, "retries": 0, "max_in_flight": 0}

    def __repr__(self) -> str:
        return f"AsyncOpenAIJudge(url={self.url!r}, model={self.config.model!r}, stats={self.stats})"

    def _bind(self) -> None:
        """Client and semaphore belong to one event loop: make them on first use in this loop."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._loop = loop
            limits = httpx.Limits(max_connections=self.config.max_concurrency,
                                   max_keepalive_connections=self.config.max_concurrency)
            self._client = httpx.AsyncClient(timeout=self.config.timeout_s, limits=limits, headers=self._headers,
                                             transport=self._transport)
            self._slots = asyncio.Semaphore(self.config.max_concurrency)

    async def answer(self, request: JudgeRequest) -> JudgeReply:
        raw, finish = await self.complete(build_messages(request))
        reply = dataclasses.replace(parse_reply(raw, request.labels), details={"finish_reason": finish})
        self.stats["calls"] += 1
        self.stats["unparseable"] += int(not reply.parsed)
        return reply

    async def complete(self, messages: list[dict[str, str]]) -> tuple[str, str]:
        """``(assistant text, finish_reason)``, retrying transient failures with exponential backoff."""
        self._bind()
        payload = chat_payload(self.config, messages)
        attempts = self.config.max_retries + 1
        last_error = ""
        for attempt in range(1, attempts + 1):
            if attempt > 1:
                await asyncio.sleep(self.config.backoff_s * 2 ** (attempt - 2))  # no slot held while waiting
            self.stats["attempts"] += 1
            self.stats["retries"] += int(attempt > 1)
            async with self._slots:
                self.in_flight += 1
                self.stats["max_in_flight"] = max(self.stats["max_in_flight"], self.in_flight)
                try:
                    outcome = await self._post_once(payload)
                finally:
                    self.in_flight -= 1
            if isinstance(outcome, tuple):
                return outcome
            last_error = outcome
        raise JudgeUnavailableError(
            f"judge server at {self.url} did not answer after {attempts} attempts "
            f"(timeout {self.config.timeout_s}s per attempt); last error: {last_error}")

    async def _post_once(self, payload: dict) -> tuple[str, str] | str:
        """The reply, or the text of a failure worth retrying."""
        try:
            response = await self._client.post(self.url, json=payload)
        except (httpx.TransportError, httpx.TimeoutException) as err:
            return self._redact(f"{type(err).__name__}: {err}")
        preview = self._redact(response.text)[:_BODY_PREVIEW_CHARS]
        if is_retryable_status(response.status_code):
            return f"HTTP {response.status_code}: {preview}"
        if response.status_code != 200:
            raise JudgeResponseError(f"judge server at {self.url} refused the request: "
                                     f"HTTP {response.status_code}: {preview}")
        return response_content(response, self.url, preview)

    def _redact(self, text: str) -> str:
        return text.replace(self._api_key, "***") if self._api_key else text


def build_async_judge(judge: JudgeConfig, make_inline: Callable[[], Judge]) -> AsyncJudge:
    """The event-loop judge for ``judge.backend``: async HTTP for 'openai', else the in-process judge
    that ``make_inline`` builds."""
    if judge.backend == "openai":
        return AsyncOpenAIJudge(judge)
    return InlineJudge(make_inline())
