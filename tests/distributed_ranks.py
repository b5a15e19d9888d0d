"""Run the distributed SFT entry point as CPU ranks (gloo) for tests.

The ranks come from a fork server that imported torch and this module once and has run no
torch operation: a process forked from one that has (the test process) can deadlock in its
first operation on a lock held at fork time, and a fresh interpreter per rank pays the
imports again (minutes on a busy machine).
"""

from __future__ import annotations

import builtins
import io
import json
import multiprocessing
import os
import socket
from pathlib import Path

HANG_GUARD_S = 900  # only stops a deadlocked run; not a speed requirement

_context = None


def fork_server():
    """The ``forkserver`` context, started once per test process with this module preloaded."""
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload([__name__, "deltabelief.training.sft_distributed", "deltabelief.policy.policy"])
    return _context


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def record_writes_under(out: str, log: list[str]) -> None:
    """Make this process note every file it opens for writing, directory it makes or model it
    saves under ``out`` (safetensors writes from Rust, so model saving is watched at the top)."""
    from transformers import PreTrainedModel

    from deltabelief.policy.policy import Policy

    def watched(path) -> bool:
        return str(path).startswith(out)

    real_open, real_mkdir, real_makedirs = builtins.open, Path.mkdir, os.makedirs

    def open_(file, mode="r", *a, **k):
        if watched(file) and any(c in mode for c in "wax+"):
            log.append(f"open {file} {mode}")
        return real_open(file, mode, *a, **k)

    def mkdir(self, *a, **k):
        if watched(self):
            log.append(f"mkdir {self}")
        return real_mkdir(self, *a, **k)

    def makedirs(name, *a, **k):
        if watched(name):
            log.append(f"makedirs {name}")
        return real_makedirs(name, *a, **k)

    def refuse_save(self, directory, *a, **k):
        log.append(f"save {directory}")
        raise AssertionError(f"only rank 0 may save a model, this rank saved to {directory}")

    builtins.open = io.open = open_
    Path.mkdir, os.makedirs = mkdir, makedirs
    Policy.save = PreTrainedModel.save_pretrained = refuse_save


def _rank(rank: int, world: int, port: int, argv: list[str], out: str, record: str) -> None:
    from deltabelief.training import sft_distributed

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    writes: list[str] = []
    if rank != 0:
        record_writes_under(out, writes)
    try:
        sft_distributed.main(argv)
    finally:
        Path(record).write_text(json.dumps(writes))


def run_ranks(world: int, argv: list[str], out: Path, records: Path) -> list[list[str]]:
    """``sft_distributed.main(argv)`` on ``world`` CPU ranks; returns, per rank other than 0, what
    it wrote under ``out`` (rank 0's list is always empty: it is not watched). Raises if a rank
    fails or hangs."""
    records.mkdir(parents=True, exist_ok=True)
    port, context = _free_port(), fork_server()
    processes = [context.Process(target=_rank, args=(rank, world, port, argv, str(out), str(records / f"{rank}.json")))
                 for rank in range(world)]
    for p in processes:
        p.start()
    for p in processes:
        p.join(HANG_GUARD_S)
    hung = [p.pid for p in processes if p.is_alive()]
    for p in processes:
        if p.is_alive():
            p.kill()
            p.join()
    if hung:
        raise TimeoutError(f"ranks {hung} did not finish within {HANG_GUARD_S} s")
    codes = [p.exitcode for p in processes]
    if codes != [0] * world:
        raise RuntimeError(f"rank exit codes {codes} (tracebacks are in the test output)")
    return [json.loads((records / f"{rank}.json").read_text()) for rank in range(world)]
