"""The SFT warm start on several GPUs (or CPU processes): one process per device, under torchrun.

    torchrun --standalone --nproc-per-node 8 -m deltabelief.training.sft_distributed \\
        --config qwen3-4b --trajectories trajectories.parquet --out /shared/run/sft

Same settings, data and loss as ``deltabelief sft`` (:func:`~deltabelief.training.sft.warm_start`);
each global batch of ``sft.batch_size`` conversations is split over the ranks
(:mod:`deltabelief.training.data_parallel`). ``policy.device`` picks the devices: 'auto'/'cuda'
put rank r on GPU ``LOCAL_RANK`` with NCCL, 'cpu' runs the ranks on the CPU with gloo.

Rank 0 alone writes ``--out``: ``model/``, ``sft_result.json`` and ``sft_metrics.jsonl`` (one
JSON line per optimizer step: ``{"step": n, "loss/sft": ..., ...}``, for the caller to forward
to its tracker). The command prints the model directory last, on rank 0.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import yaml

from deltabelief.threads import passive_openmp

passive_openmp()  # before torch loads (see deltabelief/threads.py)

from deltabelief.config import Config, config_to_dict, load_config  # noqa: E402
from deltabelief.training.data_parallel import DataParallel  # noqa: E402
from deltabelief.training.sft import warm_start  # noqa: E402

log = logging.getLogger(__name__)

METRICS_FILE = "sft_metrics.jsonl"


class MetricsFile:
    """A ``log_fn`` that appends each step's metrics to a JSON-lines file."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")  # a rerun into the same directory starts a fresh file

    def __call__(self, metrics: dict, step: int) -> None:
        with self.path.open("a") as out:
            out.write(json.dumps({"step": step, **metrics}) + "\n")


def launch_warm_start(config: Config, trajectories: Path, out_dir: Path,
                      log_fn: Callable[[dict, int], None] | None = None) -> Path:
    """Run this module under torchrun with ``config.sft.processes`` processes on this node, then
    hand rank 0's per-step metrics to ``log_fn``; returns the model directory. A failed rank
    fails the call (torchrun's exit status), naming the command."""
    out_dir.mkdir(parents=True, exist_ok=True)
    preset = out_dir / "config.yaml"
    preset.write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={config.sft.processes}", "-m", __name__,
               "--config", str(preset), "--trajectories", str(trajectories), "--out", str(out_dir)]
    log.info("warm start on %d processes: %s", config.sft.processes, " ".join(command))
    done = subprocess.run(command)
    if done.returncode != 0:
        raise RuntimeError(f"the distributed warm start failed (exit {done.returncode}): {' '.join(command)}")
    for line in (out_dir / METRICS_FILE).read_text().splitlines():
        record = json.loads(line)
        step = record.pop("step")
        if log_fn is not None:
            log_fn(record, step)
    return out_dir / "model"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="torchrun ... -m deltabelief.training.sft_distributed",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="preset name in configs/ or a YAML path")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config field, e.g. --set sft.epochs=2 (repeatable)")
    parser.add_argument("--trajectories", required=True, help="trajectories.parquet from `deltabelief synth`")
    parser.add_argument("--out", required=True, help="output directory (written by rank 0 only)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config = load_config(args.config, args.set)
    parallel = DataParallel.from_environment(config.policy.device)
    logging.basicConfig(level=logging.INFO if parallel.is_main else logging.WARNING,
                        format=f"[rank {parallel.rank}] %(levelname)s %(name)s: %(message)s")
    try:
        out = Path(args.out)
        log.info("SFT on %d ranks (%s), global batch %d", parallel.world_size, parallel.device, config.sft.batch_size)
        metrics = MetricsFile(out / METRICS_FILE) if parallel.is_main else None
        model_dir = warm_start(config, Path(args.trajectories), out, progress=parallel.is_main, log_fn=metrics,
                               parallel=parallel)
        parallel.barrier()  # no rank exits before rank 0 has saved
    finally:
        parallel.close()
    if parallel.is_main:
        print(f"warm-started model saved to {model_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
