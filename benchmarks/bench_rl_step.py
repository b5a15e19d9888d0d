"""Where an RL step's time goes: the share spent on belief scoring, next to rollout and update.

Runs a few ΔBelief-RL steps of the cpu preset (SmolLM2-135M, KB judge) from the base model and
reads the trainer's own ``perf/seconds_*`` metrics; shares are ratios within the same steps.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile

from deltabelief.config import load_config
from deltabelief.data.knowledge_base import load_kb
from deltabelief.games.base import Target
from deltabelief.training.metrics import stage_shares
from deltabelief.training.rl import run_rl

def run(preset: str = "cpu", num_steps: int = 2, num_targets: int = 16) -> dict:
    config = load_config(preset, [f"train.num_steps={num_steps}", f"train.checkpoint_every={num_steps + 1}"])
    nouns = load_kb(nouns=config.game.kb_nouns or None).nouns[:num_targets]
    targets = [Target(id=f"kb-{noun}", task="twenty_questions", target=noun) for noun in nouns]
    with tempfile.TemporaryDirectory(prefix="bench-rl-") as out:
        history = run_rl(config, targets, out, progress=False).history
    step_seconds = [m["perf/seconds_step"] for m in history]
    result = {"preset": preset, "num_steps": num_steps, "median_step_seconds": statistics.median(step_seconds)}
    result.update({f"share_{stage}": round(share, 4) for stage, share in stage_shares(history).items()})
    result["policy_tokens_per_s"] = statistics.mean(m["perf/policy_tokens_per_s"] for m in history)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu", help="config preset (default: cpu)")
    parser.add_argument("--steps", type=int, default=2, help="RL steps to time")
    args = parser.parse_args()
    print(json.dumps(run(args.preset, args.steps), indent=2))


if __name__ == "__main__":
    main()
