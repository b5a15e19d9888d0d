"""Learning curves of ΔBelief-RL against StarPO from one shared warm start, over several seeds.

    python experiments/compare_estimators.py --out runs/curves --seeds 0,1,2 --jobs 2

Steps (each skipped when its output is already complete, so an interrupted comparison resumes):
  1. ``deltabelief synth``  with the first preset's data section  -> OUT/data
  2. ``deltabelief sft``    once, shared by every run             -> OUT/sft/model
  3. ``deltabelief train``  per (preset, seed) with train.seed     -> OUT/<preset>-seed<S>/metrics.jsonl
Then it writes OUT/curves.json (mean and std across seeds per step, and each stage's share
of an RL step's wall time), OUT/curves.png and OUT/curves.md. The presets default to cpu
(turn_grpo + ΔBelief reward) and cpu-grpo (StarPO: trajectory-level GRPO, no belief reward),
which differ only in their method keys.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from deltabelief.training.metrics import stage_shares

CURVES = {  # metric -> label; rewards are left out: each preset's reward has different terms
    "rollout/success_rate": "success rate",
    "rollout/num_turns_mean": "mean questions per game",
    "rollout/repeated_rate": "repeated-question rate",
    "rollout/unanswerable_rate": "unanswerable-question rate",
    "belief/delta_mean": "mean ΔBelief per turn",
}


def deltabelief(*args: str, threads: int) -> None:
    """Run the CLI in a subprocess with ``threads`` torch threads; a failure stops the comparison."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    command = [sys.executable, "-m", "deltabelief.cli", *args]
    print("+", " ".join(command[2:]), flush=True)
    subprocess.run(command, env=env, check=True)


def finished_steps(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def train(preset: str, seed: int, out: Path, num_steps: int, threads: int) -> Path:
    run_dir = out / f"{preset}-seed{seed}"
    if finished_steps(run_dir) < num_steps:
        resume = ["--resume"] if run_dir.exists() else []
        deltabelief("train", "--config", preset, "--model", str(out / "sft" / "model"),
                    "--targets", str(out / "data" / "targets.parquet"), "--out", str(run_dir),
                    "--set", f"train.seed={seed}", "--set", f"train.num_steps={num_steps}", *resume,
                    threads=threads)
    return run_dir


def read_history(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]


def summarise(histories: dict[str, list[list[dict]]]) -> dict:
    """{preset: {metric: {"mean": [...], "std": [...]}}} per step, std across seeds (ddof 0)."""
    out: dict = {}
    for preset, runs in histories.items():
        steps = min(len(h) for h in runs)
        out[preset] = {}
        for metric in CURVES:
            values = [[h[i].get(metric, float("nan")) for h in runs] for i in range(steps)]
            out[preset][metric] = {"mean": [statistics.fmean(v) for v in values],
                                   "std": [statistics.pstdev(v) for v in values]}
    return out


def plot(curves: dict, seeds: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(CURVES), figsize=(4.2 * len(CURVES), 3.4))
    for ax, (metric, label) in zip(axes, CURVES.items()):
        for preset, series in curves.items():
            mean, std = series[metric]["mean"], series[metric]["std"]
            steps = range(1, len(mean) + 1)
            ax.plot(steps, mean, marker="o", label=preset)
            ax.fill_between(steps, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)], alpha=0.2)
        ax.set_xlabel("RL step")
        ax.set_title(label, fontsize=9)
    axes[0].legend()
    fig.suptitle(f"mean ± std over seeds {seeds}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


TABLE = {"rollout/success_rate": "success", "rollout/num_turns_mean": "questions",
         "rollout/repeated_rate": "repeated", "belief/delta_mean": "ΔBelief"}


def table(curves: dict) -> str:
    """Markdown: per step and preset, the mean ± std across seeds of the TABLE metrics."""
    presets = list(curves)
    head = "| step | " + " | ".join(f"{p} {label}" for p in presets for label in TABLE.values()) + " |"
    rows = [head, "|---" * (1 + len(TABLE) * len(presets)) + "|"]
    steps = min(len(curves[p]["rollout/success_rate"]["mean"]) for p in presets)
    for i in range(steps):
        cells = [f"{curves[p][m]['mean'][i]:.2f} ± {curves[p][m]['std'][i]:.2f}" for p in presets for m in TABLE]
        rows.append(f"| {i + 1} | " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--out", type=Path, default=Path("runs/curves"), help="output directory")
    parser.add_argument("--presets", default="cpu,cpu-grpo", help="presets to compare (default: cpu,cpu-grpo)")
    parser.add_argument("--seeds", default="0,1,2", help="train.seed values (default: 0,1,2)")
    parser.add_argument("--steps", type=int, default=10, help="RL steps per run (default: 10, the cpu preset's)")
    parser.add_argument("--jobs", type=int, default=2, help="training runs at once, one torch thread each")
    args = parser.parse_args()
    presets = args.presets.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    out = args.out
    threads = 1 if args.jobs > 1 else (os.cpu_count() or 1)

    if not (out / "data" / "targets.parquet").exists():
        deltabelief("synth", "--config", presets[0], "--out", str(out / "data"), threads=threads * args.jobs)
    if not (out / "sft" / "model").exists():
        deltabelief("sft", "--config", presets[0], "--trajectories", str(out / "data" / "trajectories.parquet"),
                    "--out", str(out / "sft"), threads=threads * args.jobs)
    runs = [(p, s) for s in seeds for p in presets]
    with ThreadPoolExecutor(args.jobs) as pool:
        dirs = list(pool.map(lambda ps: train(ps[0], ps[1], out, args.steps, threads), runs))
    histories: dict[str, list[list[dict]]] = {p: [] for p in presets}
    for (preset, _), run_dir in zip(runs, dirs):
        histories[preset].append(read_history(run_dir)[: args.steps])
    curves = summarise(histories)
    shares = stage_shares([m for runs in histories.values() for h in runs for m in h])
    (out / "curves.json").write_text(json.dumps({"seeds": seeds, "steps": args.steps, "curves": curves,
                                                 "step_time_shares": shares}, indent=2))
    plot(curves, seeds, out / "curves.png")
    (out / "curves.md").write_text(table(curves))
    print(table(curves))
    print("share of an RL step's wall time:", ", ".join(f"{k} {v:.1%}" for k, v in shares.items()))
    print(f"curves in {out}/curves.json, {out}/curves.png, {out}/curves.md")


if __name__ == "__main__":
    main()
