"""Where an RL step's time goes, old sampler vs new side by side, against the machine's roofline.

Runs the first ΔBelief-RL step of the cpu preset (SmolLM2-135M, KB judge, 16 games) from the
base model once per variant, the variants interleaved over ``repeats`` (the same step, the same
seeds, so the same work up to rare sampling flips), and reads the trainer's own ``perf/`` metrics.
The machine's matmul GFLOPS and weight-read bandwidth are measured in the same run
(benchmarks/roofline.py); every stage is reported against its floor.

    python -m benchmarks.bench_rl_step --turns 10 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile

import torch

from benchmarks.roofline import matmul_gflops, model_sizes, step_roofline, weight_read_gbps
from deltabelief.config import load_config
from deltabelief.data.knowledge_base import load_kb
from deltabelief.policy.loading import load_causal_lm
from deltabelief.training.metrics import stage_shares
from deltabelief.training.rl import run_rl
from deltabelief.types import Target

VARIANTS = {
    "legacy": ["policy.sampler=legacy", "train.packing=pad"],
    # The fast sampler with right-padded training forwards: the default before prefix-tree steps.
    "fast_padded": ["policy.sampler=fast", "train.packing=pad"],
    # The default: rollouts sharing the prompt share its tokens; beliefs and log π_old in one forward.
    "fast": ["policy.sampler=fast", "train.packing=prefix_tree"],
    # No forward for log π_old: the fast sampler's recorded log-probs serve (exact up to float rounding).
    "fast_sampler_logprobs": ["policy.sampler=fast", "train.packing=prefix_tree", "ppo.old_logprobs=sampling"],
}


def _one_step(preset: str, overrides: list[str], targets: list[Target]) -> dict[str, float]:
    config = load_config(preset, ["train.num_steps=1", "train.checkpoint_every=2", *overrides])
    with tempfile.TemporaryDirectory(prefix="bench-rl-") as out:
        (metrics,) = run_rl(config, targets, out, progress=False).history
    return metrics


def _median(values: list[float | None], digits: int | None = 4) -> float | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    return round(statistics.median(values), digits) if digits is not None else statistics.median(values)


def run(preset: str = "cpu", num_targets: int = 16, max_turns: int = 10, repeats: int = 1,
        variants: tuple[str, ...] = tuple(VARIANTS)) -> dict:
    threads = torch.get_num_threads()
    model, _ = load_causal_lm(load_config(preset, []).policy.model)
    sizes = model_sizes(model)
    gflops, gbps = matmul_gflops(threads), weight_read_gbps(model, threads)
    del model
    config = load_config(preset, [])
    nouns = load_kb(nouns=config.game.kb_nouns or None).nouns[:num_targets]
    targets = [Target(id=f"kb-{noun}", task="twenty_questions", answer=noun) for noun in nouns]
    games = config.train.targets_per_step * config.train.rollouts_per_target
    history: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
    for _ in range(repeats):  # interleaved: each variant sees the same machine state in turn
        for name in variants:
            history[name].append(_one_step(preset, [f"game.max_turns={max_turns}", *VARIANTS[name]], targets))
    result = {
        "preset": preset, "max_turns": max_turns, "games": games, "repeats": repeats, "threads": threads,
        "machine": {"matmul_gflops": round(gflops, 1), "weight_read_gb_per_s": round(gbps, 1),
                    "weight_bytes": sizes["weight_bytes"]},
        "variants": {},
    }
    for name, steps in history.items():
        lines = [step_roofline(m, sizes, gflops, gbps, games) for m in steps]
        summary = {"median_step_seconds": _median([m["perf/seconds_step"] for m in steps])}
        summary.update({f"share_{stage}": round(share, 4) for stage, share in stage_shares(steps).items()})
        summary.update({key: _median([line.get(key) for line in lines]) for key in lines[0]})
        # What exactness costs: |sampler log-prob - recomputed log π_old| (recompute variants only).
        summary["old_logprob_gap_mean"] = _median([m.get("loss/old_logprob_gap") for m in steps], None)
        summary["old_logprob_gap_max"] = _median([m.get("loss/old_logprob_gap_max") for m in steps], None)
        summary["ratio_mean"] = _median([m.get("loss/ratio_mean") for m in steps])
        summary["ratio_max"] = _median([m.get("loss/ratio_max") for m in steps])
        result["variants"][name] = summary
    if "legacy" in history:
        base = result["variants"]["legacy"]
        for name, summary in result["variants"].items():
            summary["step_time_vs_legacy"] = round(summary["median_step_seconds"] / base["median_step_seconds"], 3)
            summary["rollout_speedup_vs_legacy"] = round(
                summary["rollout_tokens_per_s"] / base["rollout_tokens_per_s"], 2)
            for stage in ("scoring", "update"):
                summary[f"{stage}_time_vs_legacy"] = round(
                    summary[f"{stage}_seconds"] / base[f"{stage}_seconds"], 3)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu", help="config preset (default: cpu)")
    parser.add_argument("--turns", type=int, default=10, help="game.max_turns of the timed step")
    parser.add_argument("--repeats", type=int, default=1, help="interleaved repeats of every variant")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {list(VARIANTS)}")
    args = parser.parse_args()
    report = run(args.preset, max_turns=args.turns, repeats=args.repeats,
                 variants=tuple(v for v in args.variants.split(",") if v))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
