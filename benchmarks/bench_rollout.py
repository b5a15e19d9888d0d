"""Rollout throughput: policy tokens per second at 1, 8 and 32 concurrent Twenty Questions games.

The judge is a stand-in that answers yes/no instantly, so the numbers measure the
policy (batched sampling, re-prefill of the growing conversation each round) and
the game bookkeeping, not a judge. Also times one full game (``single_game_turns``
questions, one game alone), the latency a user of ``deltabelief play`` sees.

    python benchmarks/bench_rollout.py --model smollm2 --turns 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch

from deltabelief.config import PolicyConfig
from deltabelief.games.twenty_questions import TwentyQuestions
from deltabelief.policy.policy import Policy
from deltabelief.rollout import rollout_with_stats
from deltabelief.types import JudgeReply, JudgeRequest, Target

# Secrets the model is unlikely to name by chance, so every game runs its full budget.
SECRETS = (
    "harmonica anvil thimble kayak lantern trombone walrus compass sundial spatula igloo "
    "hammock metronome periscope toboggan accordion abacus cactus gondola harpoon kettle "
    "mandolin nutcracker origami quill rickshaw sextant tambourine ukulele wheelbarrow yurt zeppelin"
).split()


class YesNoJudge:
    """Stand-in judge: 'yes' for moves with an even number of characters, else 'no'."""

    name = "bench-yes-no"

    def answer_batch(self, requests: list[JudgeRequest]) -> list[JudgeReply]:
        return [JudgeReply(label="yes" if len(r.move) % 2 == 0 else "no") for r in requests]


def _targets(count: int) -> list[Target]:
    return [Target(id=f"bench-{i}", task="twenty_questions", answer=SECRETS[i % len(SECRETS)]) for i in range(count)]


def _measure(policy: Policy, games: int, turns: int, seed: int) -> dict:
    _, stats = rollout_with_stats(
        policy, TwentyQuestions(max_turns=turns), YesNoJudge(), _targets(games), 1,
        seed=seed, batch_size=games, progress=False,
    )
    return {
        "concurrent_games": games,
        "rounds": stats.num_rounds,
        "policy_turns": stats.num_policy_turns,
        "policy_tokens": stats.policy_tokens,
        "sample_seconds": round(stats.sample_seconds, 3),
        "total_seconds": round(stats.total_seconds, 3),
        "policy_tokens_per_s": round(stats.tokens_per_second, 2),
        "seconds_per_round": round(stats.total_seconds / max(stats.num_rounds, 1), 3),
    }


def run(
    model_spec: str = "smollm2", concurrency: tuple[int, ...] = (1, 8, 32), turns: int = 5,
    single_game_turns: int = 20, seed: int = 0, threads: int | None = None,
    keep_kv_cache: bool = True,
) -> dict:
    """Measure rollout throughput for each concurrency level (side by side, one model load).

    ``threads`` sets torch's intra-op threads (default: torch's choice). On a shared, busy
    machine one thread can be much faster than two: OpenMP workers spin on each other.
    """
    if threads:
        torch.set_num_threads(threads)
    policy = Policy.from_config(PolicyConfig(model=model_spec, keep_kv_cache=keep_kv_cache), seed=seed)
    _measure(policy, 1, 1, seed)  # warm-up: first-call overheads, stop-token table
    results = [_measure(policy, games, turns, seed) for games in concurrency]
    report = {
        "benchmark": "rollout",
        "model": model_spec,
        "turns": turns,
        "max_new_tokens": policy.config.max_new_tokens,
        "torch_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "keep_kv_cache": policy.config.keep_kv_cache,
        "machine": platform.machine(),
        "results": results,
    }
    if single_game_turns:
        began = time.perf_counter()
        one = _measure(policy, 1, single_game_turns, seed)
        report["single_game"] = {**one, "wall_seconds": round(time.perf_counter() - began, 3)}
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2", help="policy model spec (smollm2, tiny, a directory, ...)")
    parser.add_argument("--concurrency", default="1,8,32", help="comma-separated numbers of concurrent games")
    parser.add_argument("--turns", type=int, default=5, help="questions per game in the throughput runs")
    parser.add_argument("--single-game-turns", type=int, default=20, help="questions in the one-game timing (0: skip)")
    parser.add_argument("--no-kv-cache", action="store_true", help="re-run the whole conversation every turn")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    args = parser.parse_args()
    concurrency = tuple(int(c) for c in args.concurrency.split(","))
    report = run(
        args.model, concurrency, args.turns, args.single_game_turns,
        threads=args.threads or None, keep_kv_cache=not args.no_kv_cache,
    )
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
