"""The 'openai' judge: any OpenAI-compatible chat-completions server.

A vLLM server (``vllm serve Qwen/Qwen3-14B``), ``deltabelief serve`` or a hosted
API. Each request is one ``POST {base_url}/chat/completions`` with ``model``,
``messages``, ``temperature`` and ``max_tokens``, sent with ``requests`` (no
``openai`` package). Requests of a batch run concurrently, at most
``config.max_concurrency`` at a time.

Failures: connection errors, timeouts (``config.timeout_s`` per attempt), HTTP
408, 429 and 5xx are retried ``config.max_retries`` times with exponential backoff
(``backoff_s``, ``2·backoff_s``, …); then :class:`JudgeUnavailableError` names
the URL, the attempts and the last error. Other HTTP errors (400, 401, 404, …)
and malformed response bodies raise :class:`JudgeResponseError` at once.

The API key is read from the environment variable named by
``config.api_key_env``; it is sent only in the ``Authorization`` header and is
never logged, shown in ``repr`` or put into an error message.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor

import requests

from deltabelief.config import JudgeConfig
from deltabelief.judges.base import register_judge
from deltabelief.judges.parsing import build_messages, parse_reply
from deltabelief.retry import RetriesExhausted, Retryable, is_retryable_status, with_retries
from deltabelief.types import JudgeReply, JudgeRequest

log = logging.getLogger(__name__)

_BODY_PREVIEW_CHARS = 300


def http_endpoint(config: JudgeConfig) -> tuple[str, str]:
    """``(chat-completions URL, API key or '')`` after checking the HTTP judge's settings."""
    if config.max_retries < 0:
        raise ValueError(f"judge.max_retries must be >= 0, got {config.max_retries}")
    if config.max_concurrency < 1:
        raise ValueError(f"judge.max_concurrency must be at least 1, got {config.max_concurrency}")
    api_key = os.environ.get(config.api_key_env, "") if config.api_key_env else ""
    return config.base_url.rstrip("/") + "/chat/completions", api_key


def chat_payload(config: JudgeConfig, messages: list[dict[str, str]]) -> dict:
    """The chat-completions request body; ``judge.enable_thinking=false`` turns Qwen3's reasoning off
    through the chat template (vLLM's ``chat_template_kwargs``), as the paper's judge runs."""
    payload = {"model": config.model, "messages": messages, "temperature": config.temperature,
               "max_tokens": config.max_tokens}
    if not config.enable_thinking:
        payload["chat_template_kwargs"] = {"enable_thinking": False}
    return payload


def response_content(response, url: str, preview: str) -> tuple[str, str]:
    """``completion_content`` of an HTTP response (requests or httpx) whose body must be JSON."""
    try:
        body = response.json()
    except ValueError as err:
        raise JudgeResponseError(f"judge server at {url} sent a body without choices[0].message.content "
                                 f"(not JSON: {err}): {preview}") from err
    return completion_content(body, url, preview)


def completion_content(body: object, url: str, preview: str) -> tuple[str, str]:
    """The first choice's ``(content, finish_reason)`` of a decoded response body; null content is ''."""
    try:
        choice = body["choices"][0]  # type: ignore[index]
        content = choice["message"]["content"]
    except (KeyError, IndexError, TypeError) as err:
        raise JudgeResponseError(f"judge server at {url} sent a body without choices[0].message.content "
                                 f"({type(err).__name__}: {err}): {preview}") from err
    if content is not None and not isinstance(content, str):
        raise JudgeResponseError(f"judge server at {url} sent non-text content: {type(content).__name__}")
    return content or "", str(choice.get("finish_reason") or "")


class JudgeUnavailableError(RuntimeError):
    """The judge server could not be reached (or kept failing) after every retry."""


class JudgeResponseError(RuntimeError):
    """The judge server answered with an error that retrying will not fix, or with a malformed body."""


class OpenAIJudge:
    """Judge that asks an OpenAI-compatible server.

    ``stats``: ``calls`` (requests answered), ``unparseable`` (replies without a
    valid label, answered as 'invalid'), ``attempts`` (HTTP attempts, retries
    included), ``retries`` (attempts after a failed one). Each reply's
    ``details["finish_reason"]`` is what the server reported ('stop', 'length', …).
    """

    name = "openai"

    def __init__(self, config: JudgeConfig, session: requests.Session | None = None):
        self.config = config
        self.url, self._api_key = http_endpoint(config)
        self.session = session or requests.Session()
        if not self._api_key:
            log.debug("no API key in $%s; sending requests without Authorization", config.api_key_env)
        self._lock = threading.Lock()
        self.stats: dict[str, int] = {"calls": 0, "unparseable": 0, "attempts": 0, "retries": 0}

    def __repr__(self) -> str:
        return f"OpenAIJudge(url={self.url!r}, model={self.config.model!r}, stats={self.stats})"

    # ------------------------------------------------------------ batch

    def answer_batch(self, requests_: list[JudgeRequest]) -> list[JudgeReply]:
        """One reply per request, in order; raises if any request cannot be answered."""
        if not requests_:
            return []
        messages = [build_messages(r) for r in requests_]
        workers = min(self.config.max_concurrency, len(requests_))
        if workers == 1:
            outputs = [self.complete(m) for m in messages]
        else:
            outputs = self._complete_concurrently(messages, workers)
        return [self._parse(request, raw, finish) for request, (raw, finish) in zip(requests_, outputs)]

    def _complete_concurrently(self, messages: list[list[dict[str, str]]], workers: int) -> list[tuple[str, str]]:
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="openai-judge")
        futures: list[Future] = [pool.submit(self.complete, m) for m in messages]
        try:
            return [f.result() for f in futures]
        finally:
            # On failure, drop requests that have not started; running ones finish their retries.
            pool.shutdown(wait=True, cancel_futures=True)

    def _parse(self, request: JudgeRequest, raw: str, finish_reason: str) -> JudgeReply:
        reply = dataclasses.replace(parse_reply(raw, request.labels), details={"finish_reason": finish_reason})
        with self._lock:
            self.stats["calls"] += 1
            if not reply.parsed:
                self.stats["unparseable"] += 1
        if not reply.parsed:
            log.debug("unparseable judge reply for target %r: %r", request.target.id, raw[:200])
        return reply

    # ------------------------------------------------------------ one request

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        return headers

    def _redact(self, text: str) -> str:
        return text.replace(self._api_key, "***") if self._api_key else text

    def complete(self, messages: list[dict[str, str]]) -> tuple[str, str]:
        """``(assistant text, finish_reason)`` for one chat, retrying transient failures."""
        payload = chat_payload(self.config, messages)
        attempts = self.config.max_retries + 1
        try:
            return with_retries(lambda: self._post_once(payload), attempts, self.config.backoff_s,
                                what="judge attempt", on_attempt=self._count_attempt)
        except RetriesExhausted as err:
            raise JudgeUnavailableError(
                f"judge server at {self.url} did not answer after {attempts} attempts "
                f"(timeout {self.config.timeout_s}s per attempt); last error: {err}"
            ) from None

    def _count_attempt(self, attempt: int) -> None:
        with self._lock:
            self.stats["attempts"] += 1
            self.stats["retries"] += int(attempt > 1)

    def _post_once(self, payload: dict) -> tuple[str, str]:
        try:
            response = self.session.post(
                self.url, json=payload, headers=self._headers(), timeout=self.config.timeout_s
            )
        except (requests.ConnectionError, requests.Timeout) as err:
            raise Retryable(self._redact(f"{type(err).__name__}: {err}")) from None
        if is_retryable_status(response.status_code):
            raise Retryable(f"HTTP {response.status_code}: {self._body_preview(response)}")
        if response.status_code != 200:
            raise JudgeResponseError(
                f"judge server at {self.url} refused the request: HTTP {response.status_code}: "
                f"{self._body_preview(response)}"
            )
        return self._content(response)

    def _body_preview(self, response: requests.Response) -> str:
        return self._redact(response.text)[:_BODY_PREVIEW_CHARS]

    def _content(self, response: requests.Response) -> tuple[str, str]:
        return response_content(response, self.url, self._body_preview(response))


@register_judge("openai")
def make_openai_judge(config: JudgeConfig | None = None, session: requests.Session | None = None) -> OpenAIJudge:
    """An OpenAI-compatible judge for ``config.base_url`` / ``config.model``."""
    return OpenAIJudge(config or JudgeConfig(backend="openai"), session=session)
