"""Belief-scoring cost: packed vs per-prefix scoring, and packed scoring vs one plain forward.

For each game length N (5, 10, 20 turns) one Twenty Questions-like trajectory is rendered with the
model's chat template and timed, side by side in one process:

- ``packed``: :func:`deltabelief.belief.score_beliefs` (one forward over h_N + N+1 suffixes);
- ``per_prefix``: :func:`deltabelief.belief.score_beliefs_per_prefix` (N+1 forwards);
- ``plain``: one ``model(input_ids)`` over the same trajectory with logits at every position
  (what a trainer's log-probability pass costs anyway).

Reported per N: median wall and CPU seconds of each (calls interleaved), ``per_prefix / packed``
(speed-up of packing) and ``packed / plain`` (cost of belief scoring relative to one forward), both
from CPU time, the tokens each way feeds the model (noise-free), and the largest
|packed − per_prefix| log-belief difference on the model's weights.

Under ``verl`` the same game goes through the cluster path's two layouts (``cluster.belief_layout``),
the actor's forward replaced by the same model on the CPU:

- ``per_prefix``: :func:`deltabelief.integrations.verl.belief.score_beliefs`, elicitation rows in
  verl's layout, each row's valid tokens forwarded as verl's remove-padding engine does;
- ``packed``: :func:`deltabelief.integrations.verl.packed_belief.score_beliefs_packed` with
  :func:`~deltabelief.integrations.verl.packed_belief.score_payload` (what each actor rank runs).

Reported per N: tokens processed per trajectory token of each (``*_token_ratio``, counted),
the CPU-time ratio ``per_prefix / packed`` and the largest |packed − per_prefix| difference.

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

import numpy as np
from verl.protocol import DataProto

from deltabelief.belief import build_elicitation, score_beliefs, score_beliefs_per_prefix, turn_ends
from deltabelief.integrations.verl.belief import score_batch_beliefs as score_beliefs_verl
from deltabelief.integrations.verl.packed_belief import layout_tokens, score_beliefs_packed, score_payload
from deltabelief.policy.chat import encode, observation_ids, prompt_ids
from deltabelief.policy.loading import load_causal_lm
from deltabelief.trajectory import PolicyTurn, Trajectory
from deltabelief.types import Target

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
    return Trajectory(Target(id=target, task="twenty_questions", answer=target), 0, 0, ids, prompt_length, turns)


def verl_rollouts(trajectories: list[Trajectory], pad_id: int) -> DataProto:
    """Rollouts in verl's layout (prompts left-padded, responses right-padded) as the agent loop returns them."""
    prompts = [t.input_ids[: t.prompt_length] for t in trajectories]
    responses = [t.input_ids[t.prompt_length:] for t in trajectories]
    width, length = max(map(len, prompts)), max(map(len, responses))
    prompt_ids = torch.full((len(prompts), width), pad_id)  # [B, P]
    response_ids = torch.full((len(prompts), length), pad_id)  # [B, R]
    attention = torch.zeros((len(prompts), width + length), dtype=torch.long)  # [B, P + R]
    ends = np.empty(len(prompts), dtype=object)
    targets = np.array([t.target.answer for t in trajectories], dtype=object)
    for row, (prompt, response, traj) in enumerate(zip(prompts, responses, trajectories)):
        prompt_ids[row, width - len(prompt):] = torch.tensor(prompt)
        response_ids[row, : len(response)] = torch.tensor(response)
        attention[row, width - len(prompt): width + len(response)] = 1
        ends[row] = [e - traj.prompt_length for e in turn_ends(traj)]  # response coordinates, e_0 = 0
    return DataProto.from_dict(tensors={"prompts": prompt_ids, "responses": response_ids, "attention_mask": attention},
                               non_tensors={"db_turn_ends": ends, "db_target": targets})


def engine_log_probs(model) -> Callable[[DataProto], torch.Tensor]:
    """The actor's compute_log_prob on the CPU: each row's valid tokens forwarded (no padding), as
    verl's remove-padding engine feeds them; returns [M, R] log-probs of the response tokens."""

    def compute(rows: DataProto) -> torch.Tensor:
        width = rows.batch["prompts"].shape[1]
        out = torch.zeros(rows.batch["responses"].shape)  # [M, R]
        with torch.no_grad():
            for row, (ids, attention) in enumerate(zip(rows.batch["input_ids"], rows.batch["attention_mask"])):
                valid = attention.bool()
                logits = model(input_ids=ids[valid][None], use_cache=False).logits[0].float()  # [n, V]
                logp = torch.log_softmax(logits[:-1], dim=-1).gather(1, ids[valid][1:, None])[:, 0]  # [n−1]
                num_prompt = int(valid[:width].sum())
                response = logp[num_prompt - 1:]  # log π of response token k given everything before it
                out[row, : len(response)] = response
        return out

    return compute


def worker_packed_beliefs(model) -> Callable[[DataProto], DataProto]:
    """What each actor rank runs in compute_packed_beliefs, on the CPU in eval mode."""

    def compute(payload: DataProto) -> DataProto:
        with torch.no_grad():
            return score_payload(model, payload)

    return compute


def verl_layouts(model, tokenizer, traj: Trajectory, template: str, repeats: int) -> dict:
    """The cluster path's two layouts on one game: counted tokens, CPU-time ratio, largest difference."""
    rollouts = verl_rollouts([traj], tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
    tokens = layout_tokens(rollouts, tokenizer, template)
    times, out = _side_by_side({
        "packed": lambda: score_beliefs_packed(rollouts, tokenizer, template, worker_packed_beliefs(model),
                                               micro_batch_size=1),
        "per_prefix": lambda: score_beliefs_verl(rollouts, tokenizer, template, engine_log_probs(model)),
    }, repeats)
    packed, (per_prefix, _) = out["packed"], out["per_prefix"]
    return {
        "trajectory_tokens": tokens["trajectory"],
        "packed_tokens": packed.forward_tokens,
        "per_prefix_tokens": tokens["per_prefix"],
        "packed_token_ratio": packed.forward_tokens / tokens["trajectory"],
        "per_prefix_token_ratio": tokens["per_prefix"] / tokens["trajectory"],
        **{f"{name}_{key}": value for name, t in times.items() for key, value in t.items()},
        "per_prefix_over_packed": times["per_prefix"]["cpu_s"] / times["packed"]["cpu_s"],
        "max_abs_diff": (packed.log_beliefs - per_prefix).abs().max().item(),
    }


def _timed(fn: Callable[[], object]) -> tuple[float, float, object]:
    """(wall seconds, process CPU seconds, result) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, result


def _side_by_side(fns: dict[str, Callable[[], object]], repeats: int) -> tuple[dict[str, dict], dict[str, object]]:
    """Median wall and CPU seconds of each function, calls interleaved so that load changes hit all alike."""
    results = {name: fn() for name, fn in fns.items()}  # warm-up
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            wall, cpu, results[name] = _timed(fn)
            samples[name].append((wall, cpu))
    medians = {name: {"wall_s": statistics.median(w for w, _ in s), "cpu_s": statistics.median(c for _, c in s)}
               for name, s in samples.items()}
    return medians, results


def run(model_spec: str = "smollm2", turns: tuple[int, ...] = (5, 10, 20), repeats: int = 3,
        template: str = "Is it '{target}'?") -> dict:
    """Time the three ways for each game length; see the module docstring for the keys.

    Ratios use process CPU time (robust to other processes sharing the machine); wall times are
    reported too.
    """
    model, tokenizer = load_causal_lm(model_spec)
    results: dict = {"model": model_spec, "template": template, "threads": torch.get_num_threads(), "turns": {},
                     "verl": {}}
    for num_turns in turns:
        traj = build_trajectory(tokenizer, num_turns)
        ids = torch.tensor([traj.input_ids])

        def plain(ids: torch.Tensor = ids) -> None:
            with torch.no_grad():
                model(input_ids=ids, use_cache=False)

        times, out = _side_by_side({
            "packed": lambda traj=traj: score_beliefs(model, tokenizer, [traj], template),
            "per_prefix": lambda traj=traj: score_beliefs_per_prefix(model, tokenizer, [traj], template),
            "plain_forward": plain,
        }, repeats)
        suffix = len(build_elicitation(tokenizer, template, traj.target.answer).ids)
        ends = turn_ends(traj)
        results["turns"][num_turns] = {
            "tokens": len(traj.input_ids),
            "packed_tokens": ends[-1] + len(ends) * suffix,  # one row: h_N + N+1 suffixes
            "per_prefix_tokens": sum(end + suffix for end in ends),  # N+1 rows: h_t + suffix each
            **{f"{name}_{key}": value for name, t in times.items() for key, value in t.items()},
            "per_prefix_over_packed": times["per_prefix"]["cpu_s"] / times["packed"]["cpu_s"],
            "packed_over_plain": times["packed"]["cpu_s"] / times["plain_forward"]["cpu_s"],
            "max_abs_diff": (out["packed"].log_beliefs - out["per_prefix"].log_beliefs).abs().max().item(),
        }
        log.info("N=%d: %s", num_turns, results["turns"][num_turns])
        results["verl"][num_turns] = verl_layouts(model, tokenizer, traj, template, repeats)
        log.info("verl path, N=%d: %s", num_turns, results["verl"][num_turns])
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2", help="model spec (smollm2, tiny, a directory, a .gguf file)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per measurement (median reported)")
    parser.add_argument("--turns", default="5,10,20", help="comma-separated game lengths")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    turns = tuple(int(n) for n in args.turns.split(","))
    print(json.dumps(run(args.model, turns=turns, repeats=args.repeats), indent=2))


if __name__ == "__main__":
    main()
