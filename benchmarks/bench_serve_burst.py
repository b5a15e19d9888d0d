"""A burst of concurrent clients against ``deltabelief serve`` on loopback.

Starts the real command (``deltabelief serve --model tiny --port 0``, the random tiny Llama
with SmolLM2's tokenizer, so the figures measure the server, not a model) in its own process,
then sends ``clients`` chat requests at once (``max_tokens`` 1), ``rounds`` times, with the
default ``--max-queue`` and with a queue as long as the burst. Reported per
round and overall: connections reset or refused, HTTP status counts, p50/p99 latency of the
answered requests, and the server's peak resident memory (``VmHWM`` from /proc).

    python -m benchmarks.bench_serve_burst        # or: python -m benchmarks.run --only serve_burst
"""

from __future__ import annotations

import http.client
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

MODEL = "tiny"
CHAT = [{"role": "user", "content": "Is a cat alive?"}]
RESETS = (ConnectionResetError, ConnectionRefusedError, ConnectionAbortedError, BrokenPipeError)


def _start_server(flags: list[str]) -> tuple[subprocess.Popen, str, int]:
    """``deltabelief serve`` on a free loopback port; returns the process, host and port once it listens."""
    command = [sys.executable, "-m", "deltabelief.cli", "serve", "--model", MODEL, "--port", "0", *flags]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                               cwd=Path(__file__).resolve().parent.parent)
    line = process.stdout.readline()  # "serving tiny at http://127.0.0.1:PORT/v1"
    if not line.startswith("serving "):
        process.kill()
        raise RuntimeError(f"deltabelief serve did not start: {line!r} (exit {process.poll()})")
    host, port = line.rsplit("http://", 1)[1].strip().removesuffix("/v1").split(":")
    return process, host, int(port)


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM in /proc/{pid}/status")


def _burst(host: str, port: int, clients: int) -> list[tuple[str, float]]:
    """(outcome, seconds) per client: an HTTP status code, 'reset' or another error's name."""
    body = json.dumps({"model": MODEL, "messages": CHAT, "max_tokens": 1})
    results: list[tuple[str, float]] = []
    start = threading.Barrier(clients)

    def one() -> None:
        start.wait()
        began = time.perf_counter()
        try:
            connection = http.client.HTTPConnection(host, port, timeout=300)
            connection.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            response.read()
            outcome = str(response.status)
        except RESETS:
            outcome = "reset"
        except OSError as err:
            outcome = type(err).__name__
        results.append((outcome, time.perf_counter() - began))

    threads = [threading.Thread(target=one) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def _summary(results: list[tuple[str, float]]) -> dict:
    answered = sorted(seconds for outcome, seconds in results if outcome == "200")
    return {
        "requests": len(results),
        "resets": sum(outcome == "reset" for outcome, _ in results),
        "outcomes": dict(Counter(outcome for outcome, _ in results)),
        "p50_seconds": round(_percentile(answered, 50), 3) if answered else None,
        "p99_seconds": round(_percentile(answered, 99), 3) if answered else None,
    }


def burst_against(flags: list[str], clients: int, rounds: int) -> dict:
    """``rounds`` bursts against one server started with ``flags``."""
    process, host, port = _start_server(flags)
    try:
        idle_mb = _peak_rss_mb(process.pid)
        per_round, everything = [], []
        for _ in range(rounds):
            results = _burst(host, port, clients)
            everything += results
            per_round.append(_summary(results))
        peak_mb = _peak_rss_mb(process.pid)
    finally:
        process.terminate()
        process.wait(timeout=60)
    return {
        "command": " ".join(["deltabelief serve --model", MODEL, "--port 0", *flags]),
        "rounds": per_round,
        "overall": _summary(everything),
        "server_peak_rss_mb_before_bursts": round(idle_mb, 1),
        "server_peak_rss_mb": round(peak_mb, 1),
    }


def run(clients: int = 50, rounds: int = 3) -> dict:
    """The defaults (a queue of 16: the rest get an honest 503 at once) and a queue that holds the whole burst."""
    return {
        "model": "tiny: a random tiny Llama with SmolLM2's tokenizer (deltabelief.policy.loading.tiny_causal_lm)",
        "clients_per_burst": clients,
        "cpu_count": os.cpu_count(),
        "default_queue": burst_against([], clients, rounds),
        "queue_holds_the_burst": burst_against(["--max-queue", str(clients)], clients, rounds),
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
