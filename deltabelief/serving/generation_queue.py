"""One generation at a time; the others wait in arrival order, in a bounded queue, for a bounded time.

A CPU serves one generation at a time well; what a server must not do is let
waiting requests pile up without limit or wait forever. :class:`GenerationQueue`
refuses a request when ``max_waiting`` are already waiting (:class:`QueueFull`),
gives up on one that waited ``wait_timeout_s`` (:class:`QueueTimeout`), and drops
one whose client went away while it waited (:class:`ClientGone`).
"""

from __future__ import annotations

import collections
import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

POLL_S = 0.1
"""How often a waiting request checks whether its client is still there."""


class QueueFull(RuntimeError):
    """``max_waiting`` requests already wait."""


class QueueTimeout(RuntimeError):
    """The request waited ``wait_timeout_s`` without reaching the model."""


class ClientGone(RuntimeError):
    """The client closed its connection; nobody is left to answer."""


@dataclass(frozen=True)
class QueueState:
    generating: bool
    waiting: int
    generation_seconds: float | None
    """How long the current generation has run (None when idle)."""


class GenerationQueue:
    def __init__(self, max_waiting: int, wait_timeout_s: float):
        if max_waiting < 0 or wait_timeout_s <= 0:
            raise ValueError(f"need max_waiting >= 0 and wait_timeout_s > 0, got {max_waiting}, {wait_timeout_s}")
        self.max_waiting = max_waiting
        self.wait_timeout_s = wait_timeout_s
        self._cond = threading.Condition()
        self._waiting: collections.deque[object] = collections.deque()
        self._started: float | None = None  # monotonic start of the running generation

    def state(self) -> QueueState:
        with self._cond:
            running = None if self._started is None else time.monotonic() - self._started
            return QueueState(self._started is not None, len(self._waiting), running)

    @contextlib.contextmanager
    def slot(self, client_gone: Callable[[], bool] = lambda: False) -> Iterator[None]:
        """Hold the model for the ``with`` body, after the requests that came earlier."""
        ticket = object()
        with self._cond:
            if len(self._waiting) >= self.max_waiting and (self._started is not None or self._waiting):
                raise QueueFull(f"{len(self._waiting)} requests already wait for the model (limit {self.max_waiting})")
            self._waiting.append(ticket)
            deadline = time.monotonic() + self.wait_timeout_s
            try:
                while self._started is not None or self._waiting[0] is not ticket:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise QueueTimeout(f"waited {self.wait_timeout_s:g} s for the model without getting it")
                    if client_gone():
                        raise ClientGone("the client closed its connection while waiting")
                    self._cond.wait(min(remaining, POLL_S))
            except BaseException:
                self._waiting.remove(ticket)
                self._cond.notify_all()  # the next in line may be first now
                raise
            self._waiting.popleft()
            self._started = time.monotonic()
        try:
            yield
        finally:
            with self._cond:
                self._started = None
                self._cond.notify_all()
