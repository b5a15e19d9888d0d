"""The machine's own limits, measured in the same run, and an RL step's stages against them.

Two limits, at the thread count in use: matmul GFLOPS (fp32, shapes of a training forward)
and the bandwidth of reading the model's weights once (sum over every parameter). From them:

- decode floor at ``B`` rows: a decode step reads every weight once and does 2·P·B FLOPs, so
  it takes at least max(weight bytes / bandwidth, 2·P·B / GFLOPS); B rows per such step;
- prefill floor: 2·P_body FLOPs per fed token (the output head runs on the last token only);
- forward floor (log π_old, belief): 2·P_body per token + 2·P_head per scored token;
- update floor: forward + backward, 3x the forward FLOPs.

P_body: parameters of the decoder body (no embeddings, which are a lookup); P_head: the output
head. Ratios ``achieved / floor`` are the share of what the machine allows (1.0 = at the floor).
The forward floors count every rollout's own tokens; a prefix-tree step (``train.packing:
prefix_tree``) runs a prompt its rollouts share once, so it can beat them (a ratio above 1).
"""

from __future__ import annotations

import time

import torch


def matmul_gflops(threads: int, size: int = 512, inner: int = 1536, repeats: int = 20) -> float:
    """Best-of fp32 GFLOPS of [size, inner] @ [inner, inner] at ``threads`` threads."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(size, inner), torch.randn(inner, inner)
        best = float("inf")
        for _ in range(repeats):
            began = time.perf_counter()
            torch.mm(a, b)
            best = min(best, time.perf_counter() - began)
        return 2 * size * inner * inner / best / 1e9
    finally:
        torch.set_num_threads(previous)


def weight_read_gbps(model, threads: int, repeats: int = 5) -> float:
    """Best-of bandwidth (GB/s) of reading every parameter of ``model`` once."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    params = [p.detach() for p in model.parameters()]
    size = sum(p.numel() * p.element_size() for p in params)
    try:
        best = float("inf")
        with torch.no_grad():
            for _ in range(repeats):
                began = time.perf_counter()
                for p in params:
                    p.sum()
                best = min(best, time.perf_counter() - began)
        return size / best / 1e9
    finally:
        torch.set_num_threads(previous)


def model_sizes(model) -> dict[str, int]:
    """Parameter counts: body (decoder without embeddings), head (output head), weight bytes."""
    head = model.get_output_embeddings().weight
    embed = model.get_input_embeddings().weight
    total = sum(p.numel() for p in model.parameters())  # tied head and embedding counted once
    body = total - embed.numel() - (0 if head.data_ptr() == embed.data_ptr() else head.numel())
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    return {"body": body, "head": head.numel(), "weight_bytes": weight_bytes}


def decode_floor_tokens_per_s(sizes: dict, rows: int, gflops: float, gbps: float) -> float:
    step = max(sizes["weight_bytes"] / (gbps * 1e9), 2 * (sizes["body"] + sizes["head"]) * rows / (gflops * 1e9))
    return rows / step


def step_roofline(metrics: dict[str, float], sizes: dict, gflops: float, gbps: float, rows: int) -> dict:
    """One RL step's stages (the trainer's metrics) against their floors; see the module docstring."""
    flops = gflops * 1e9
    policy = metrics["rollout/policy_tokens"]
    conversation = metrics["rollout/conversation_tokens"]
    prefill = metrics["rollout/prefill_tokens"]
    forward = 2 * sizes["body"] * conversation + 2 * sizes["head"] * policy  # one scoring forward
    decode_tps = decode_floor_tokens_per_s(sizes, rows, gflops, gbps)
    rollout_floor = policy / decode_tps + 2 * sizes["body"] * prefill / flops
    stages = {
        "rollout": (metrics["perf/seconds_rollout"], rollout_floor),
        "belief": (metrics["perf/seconds_belief"], 2 * sizes["body"] * conversation / flops),
        "old_logprobs": (metrics.get("perf/seconds_old_logprobs", 0.0), forward / flops),
        "update": (metrics["perf/seconds_update"], 3 * forward / flops),
    }
    out = {
        "rollout_tokens_per_s": policy / metrics["perf/seconds_rollout"],
        "decode_floor_tokens_per_s": decode_tps,
        "rollout_vs_decode_floor": policy / metrics["perf/seconds_rollout"] / decode_tps,
    }
    if "loss/old_logprob_gap" not in metrics:  # ppo.old_logprobs: sampling runs no such forward
        del stages["old_logprobs"]
    for stage, (seconds, floor) in stages.items():
        out[f"{stage}_seconds"] = seconds
        out[f"{stage}_floor_seconds"] = floor
        out[f"{stage}_vs_floor"] = floor / seconds if seconds > 0 else None
    # Beliefs and log π_old as one line: with train.packing=prefix_tree one forward reads both.
    scoring = [stages[name] for name in ("belief", "old_logprobs") if name in stages]
    out["scoring_seconds"] = sum(seconds for seconds, _ in scoring)
    scoring_floor = sum(floor for _, floor in scoring)
    out["scoring_vs_floor"] = scoring_floor / out["scoring_seconds"] if out["scoring_seconds"] > 0 else None
    if metrics["perf/seconds_update"] > 0:
        out["update_tokens_per_s"] = conversation / metrics["perf/seconds_update"]
        out["update_floor_tokens_per_s"] = conversation * flops / (3 * forward)
    if metrics["perf/seconds_belief"] > 0:
        out["belief_tokens_per_s"] = conversation / metrics["perf/seconds_belief"]
        out["belief_floor_tokens_per_s"] = flops / (2 * sizes["body"])
    return out
