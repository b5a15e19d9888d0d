"""Belief-scoring cost: packed vs per-prefix scoring, and packed scoring vs one plain forward.

For each game length N (5, 10, 20 turns) one Twenty Questions-like trajectory is rendered with the
model's chat template and timed, side by side in one process:

- ``packed``: :func:`deltabelief.belief.score_beliefs` (one forward over h_N + N+1 suffixes);
- ``per_prefix``: :func:`deltabelief.belief.score_beliefs_per_prefix` (N+1 forwards);
- ``plain``: one ``model(input_ids)`` over the same trajectory with logits at every position
  (what a trainer's log-probability pass costs anyway).

Reported per N: median seconds of each, ``per_prefix / packed`` (speed-up of packing),
``packed / plain`` (overhead of belief scoring relative to one forward), and the largest
|packed − per_prefix| log-belief difference on this model's real weights.

    python benchmarks/bench_belief.py --model smollm2
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from typing import Callable

import torch

from deltabelief.belief import score_beliefs, score_beliefs_per_prefix
from deltabelief.games.base import Target
from deltabelief.policy.chat import encode, observation_ids, prompt_ids
from deltabelief.policy.loading import load_causal_lm
from deltabelief.trajectory import PolicyTurn, Trajectory

log = logging.getLogger(__name__)

OPENING = [
    {"role": "system", "content": "You are playing Twenty Questions. Ask one yes-or-no question per turn."},
    {"role": "user", "content": "I am thinking of a word. Ask your first question."},
]
QUESTIONS = ["Is it alive?", "Is it an animal?", "Is it bigger than a person?", "Does it live in water?",
             "Is it a mammal?", "Can people keep it as a pet?", "Does it have four legs?", "Is it found in Africa?"]


def build_trajectory(tokenizer, num_turns: int, target: str = "elephant") -> Trajectory:
    """A rendered conversation of ``num_turns`` questions with alternating answers."""
    ids = prompt_ids(tokenizer, OPENING)
    prompt_length, turns = len(ids), []
    for t in range(num_turns):
        move, answer = QUESTIONS[t % len(QUESTIONS)], ("Yes." if t % 2 == 0 else "No.")
        move_ids = encode(tokenizer, move)
        span = (len(ids), len(ids) + len(move_ids))
        ids = ids + move_ids + observation_ids(tokenizer, answer)
        turns.append(PolicyTurn(move_ids, span, [0.0] * len(move_ids), move, answer, "yes", end_of_turn=len(ids)))
    return Trajectory(Target(id=target, task="twenty_questions", target=target), 0, 0, ids, prompt_length, turns)


def _median_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run(model_spec: str = "smollm2", turns: tuple[int, ...] = (5, 10, 20), repeats: int = 3,
        template: str = "Is it '{target}'?") -> dict:
    """Time the three ways for each game length; see the module docstring for the keys."""
    model, tokenizer = load_causal_lm(model_spec)
    results: dict = {"model": model_spec, "template": template, "threads": torch.get_num_threads(), "turns": {}}
    for num_turns in turns:
        traj = build_trajectory(tokenizer, num_turns)
        ids = torch.tensor([traj.input_ids])

        def plain() -> None:
            with torch.no_grad():
                model(input_ids=ids, use_cache=False)

        packed_s = _median_seconds(lambda: score_beliefs(model, tokenizer, [traj], template), repeats)
        prefix_s = _median_seconds(lambda: score_beliefs_per_prefix(model, tokenizer, [traj], template), repeats)
        plain_s = _median_seconds(plain, repeats)
        diff = (score_beliefs(model, tokenizer, [traj], template).log_beliefs
                - score_beliefs_per_prefix(model, tokenizer, [traj], template).log_beliefs).abs().max().item()
        results["turns"][num_turns] = {
            "tokens": len(traj.input_ids),
            "packed_s": packed_s,
            "per_prefix_s": prefix_s,
            "plain_forward_s": plain_s,
            "per_prefix_over_packed": prefix_s / packed_s,
            "packed_over_plain": packed_s / plain_s,
            "max_abs_diff": diff,
        }
        log.info("N=%d: %s", num_turns, results["turns"][num_turns])
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2", help="model spec (smollm2, tiny, a directory, a .gguf file)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per measurement (median reported)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    print(json.dumps(run(args.model, repeats=args.repeats), indent=2))


if __name__ == "__main__":
    main()
