"""A training step beside one competing CPU process, against the same step on an idle machine.

Each setting runs in a fresh process (OpenMP reads its wait policy once, when torch loads)
and times the same SFT-sized forward and backward of SmolLM2-135M. Settings:

- ``idle``: nothing else running; torch on every core (the baseline);
- ``busy_default_threads``: beside a competitor, every core, OpenMP's default wait policy
  (what a run did before deltabelief/threads.py);
- ``busy_passive_threads``: the same with ``OMP_WAIT_POLICY=PASSIVE`` (the default now);
- ``busy_fitted``: PASSIVE and :class:`deltabelief.threads.ThreadFitter` adapting the threads
  to the idle cores (``policy.adapt_threads``).

Competitors: ``spin`` (one single-threaded busy loop: a build, a browser tab) and ``torch``
(another torch job using every core). Reported: median step seconds per setting and each
busy setting's ratio to ``idle``, all measured side by side in one run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

SPIN = "while True: pass"
TORCH_JOB = (
    "import torch\n"
    "a = torch.randn(1024, 1024)\n"
    "while True: a = torch.tanh(a @ a / 32)\n"
)


def _worker(steps: int, fitted: bool, fixed_threads: int) -> None:
    """Time ``steps`` forward+backward passes; prints a JSON line with the step times."""
    import torch

    from deltabelief.config import load_config
    from deltabelief.policy.policy import Policy
    from deltabelief.threads import ThreadFitter

    policy = Policy.from_config(load_config("cpu").policy, seed=0)
    model = policy.model.train()
    fitter = ThreadFitter(fixed_threads, adapt=fitted)
    ids = torch.randint(0, 1000, (4, 256))
    times, threads = [], []
    for _ in range(steps + 1):  # the first step warms up allocators and is dropped
        threads.append(fitter.fit())
        began = time.perf_counter()
        model(input_ids=ids, labels=ids).loss.backward()
        model.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - began)
    print(json.dumps({"step_seconds": times[1:], "threads": threads[1:]}))


def _measure(steps: int, env: dict, fitted: bool, threads: int) -> dict:
    command = [sys.executable, "-m", "benchmarks.bench_contention", "--worker", "--steps", str(steps),
               "--threads", str(threads)] + (["--fitted"] if fitted else [])
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    return {"median_step_seconds": statistics.median(result["step_seconds"]), "threads": result["threads"]}


def run(steps: int = 4) -> dict:
    cores = len(os.sched_getaffinity(0))
    base = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    passive = {**base, "OMP_WAIT_POLICY": "PASSIVE"}
    default = {**base, "OMP_WAIT_POLICY": ""}  # empty: deltabelief leaves it to OpenMP's default
    result: dict = {"cores": cores, "steps": steps, "idle": _measure(steps, passive, False, cores)}
    idle = result["idle"]["median_step_seconds"]
    for name, code in (("spin", SPIN), ("torch", TORCH_JOB)):
        competitor = subprocess.Popen([sys.executable, "-c", code], env={**base, "OMP_NUM_THREADS": str(cores)})
        try:
            time.sleep(2.0)  # let the competitor reach full speed
            runs = {
                "busy_default_threads": _measure(steps, default, False, cores),
                "busy_passive_threads": _measure(steps, passive, False, cores),
                "busy_fitted": _measure(steps, passive, True, cores),
            }
        finally:
            competitor.kill()
            competitor.wait()
        for setting, measured in runs.items():
            measured["ratio_to_idle"] = round(measured["median_step_seconds"] / idle, 2)
        result[f"competitor_{name}"] = runs
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4, help="timed steps per setting")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--fitted", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args.steps, args.fitted, args.threads)
        return
    print(json.dumps(run(args.steps), indent=2))


if __name__ == "__main__":
    main()
