"""Run every benchmark and write one JSON report (``make bench``).

Each benchmark reports ratios measured side by side in one run; absolute times on a
shared machine are noise, so read the ratios.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from pathlib import Path

from benchmarks import bench_belief, bench_contention, bench_judge, bench_rl_step, bench_rollout, bench_serve_burst

BENCHMARKS = {
    "rollout": bench_rollout.run,
    "belief": bench_belief.run,
    "rl_step": bench_rl_step.run,
    "contention": bench_contention.run,
    "judge": bench_judge.run,
    "serve_burst": bench_serve_burst.run,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench-results/report.json", help="where to write the JSON report")
    parser.add_argument("--only", default="", help=f"comma-separated subset of {sorted(BENCHMARKS)}")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    chosen = [n for n in args.only.split(",") if n] or list(BENCHMARKS)
    report = {"machine": {"python": platform.python_version(), "processor": platform.machine()}, "results": {}}
    for name in chosen:
        started = time.perf_counter()
        report["results"][name] = BENCHMARKS[name]()
        report["results"][name]["wall_seconds"] = round(time.perf_counter() - started, 1)
        logging.info("benchmark %s done in %.0f s", name, report["results"][name]["wall_seconds"])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str))
    print(f"benchmark report written to {out}")


if __name__ == "__main__":
    main()
