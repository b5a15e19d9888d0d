"""Bounded retries with exponential backoff, for calls to servers (judges, served policies)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


def is_retryable_status(status: int) -> bool:
    """408 (request timeout), 429 (rate limited) and every 5xx may succeed when tried again."""
    return status in (408, 429) or 500 <= status < 600


class Retryable(Exception):
    """One failed attempt that may succeed when tried again (a timeout, a 429 or 5xx, a reset)."""


class RetriesExhausted(RuntimeError):
    """Every attempt failed with :class:`Retryable`; the message is the last failure."""


def with_retries(call: Callable[[], T], attempts: int, backoff_s: float, *, what: str = "attempt",
                 on_attempt: Callable[[int], None] | None = None) -> T:
    """``call()`` until it returns, at most ``attempts`` times, sleeping ``backoff_s · 2^(k-2)``
    before attempt k; a non-:class:`Retryable` exception propagates at once."""
    last_error = ""
    for attempt in range(1, attempts + 1):
        if attempt > 1:
            delay = backoff_s * 2 ** (attempt - 2)
            log.info("%s %d/%d in %.2fs after: %s", what, attempt, attempts, delay, last_error)
            time.sleep(delay)
        if on_attempt is not None:
            on_attempt(attempt)
        try:
            return call()
        except Retryable as err:
            last_error = str(err)
    raise RetriesExhausted(last_error)
