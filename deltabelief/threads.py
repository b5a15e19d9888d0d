"""torch's CPU threads on a machine that other programs share.

Two torch threads on a 2-core laptop are fast alone and slow beside anything else: every
operation is split across the threads and waits for the slowest, and a thread whose core
is taken stalls the whole step (measured: 3–7× slower beside one other job). Two remedies:

- ``OMP_WAIT_POLICY=PASSIVE``: a waiting OpenMP thread sleeps instead of spinning, so it
  does not burn the core its partner needs. OpenMP reads it once, when torch loads, so it is
  set by :func:`passive_openmp` before the first ``import torch`` (the command line and the
  Flyte tasks call it; a user's own setting wins).
- :class:`ThreadFitter` (opt-in, ``policy.adapt_threads``): before each unit of work (an RL
  step, an SFT batch) it counts how many cores other processes kept busy since the last call
  (``/proc/stat`` minus this process's own time) and runs torch on the cores left, at least one.
"""

from __future__ import annotations

import os
import time

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def passive_openmp() -> None:
    """Make waiting OpenMP threads sleep (unless the user chose otherwise); call before importing torch."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _busy_and_own_seconds() -> tuple[float, float] | None:
    """(CPU seconds all processes spent busy, CPU seconds this process spent), or None off Linux."""
    try:
        with open("/proc/stat") as handle:
            fields = [int(x) for x in handle.readline().split()[1:]]
        with open("/proc/self/stat") as handle:
            own = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / _CLOCK_TICKS, (int(own[11]) + int(own[12])) / _CLOCK_TICKS  # utime + stime


class ThreadFitter:
    """Sets torch's thread count: ``fixed`` (0: every core) or, with ``adapt``, the cores other
    processes left idle. Measured by ``make bench`` (contention): with passive waits, every core
    is the better default beside another torch job; adapting helps a little beside one
    single-threaded process and hurts beside a multi-threaded one, so it is opt-in."""

    def __init__(self, fixed: int = 0, cores: int | None = None, adapt: bool = False):
        if fixed < 0:
            raise ValueError(f"num_threads must be >= 0 (0: every core), got {fixed}")
        self.fixed = fixed
        self.adapt = adapt
        self.cores = cores or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
        self._last: tuple[float, float, float] | None = None
        self.threads = 0

    def others_busy_cores(self) -> float | None:
        """Cores other processes kept busy since the previous call (None on the first call)."""
        sample = _busy_and_own_seconds()
        if sample is None:
            return None
        now = (time.monotonic(), *sample)
        last, self._last = self._last, now
        if last is None or now[0] - last[0] < 0.05:
            return None
        wall = now[0] - last[0]
        return max(0.0, ((now[1] - last[1]) - (now[2] - last[2])) / wall)

    def fit(self) -> int:
        """Choose and apply the thread count for the next unit of work; returns it."""
        import torch

        if not self.adapt:
            threads = self.fixed or self.cores
        else:
            busy = self.others_busy_cores()
            if busy is None:  # no window yet: keep the current count (all cores at the start)
                threads = self.threads or self.cores
            else:
                threads = max(1, min(self.cores, round(self.cores - busy)))
        if threads != torch.get_num_threads():
            torch.set_num_threads(threads)
        self.threads = threads
        return threads
