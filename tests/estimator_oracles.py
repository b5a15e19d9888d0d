"""Loop versions of the advantage estimators: slow, obvious oracles that the vectorised
estimators of :mod:`deltabelief.advantages` are compared with (test_advantages, test_turn_rloo)."""

from __future__ import annotations

from collections import defaultdict
from typing import Hashable

import torch


def _group_stats_loop(members: list[torch.Tensor]) -> tuple[float, float]:
    """(mean, unbiased std) of a list of float64 scalars; (0, 1) for fewer than two."""
    if len(members) <= 1:
        return 0.0, 1.0
    stacked = torch.stack(members)
    return stacked.mean().item(), stacked.std(unbiased=True).item()


def _turn_grpo_loop(turn_rewards, turn_mask, group_ids, *, include_finished=True, norm_by_std=True, eps=1e-6):
    mask = turn_mask.bool()
    batch, turns = mask.shape
    ids = torch.as_tensor(group_ids).tolist()
    out = torch.zeros(batch, turns, dtype=torch.float64)
    for t in range(turns):
        for g in set(ids):
            rows = [i for i in range(batch) if ids[i] == g and (include_finished or mask[i, t])]
            values = [turn_rewards[i, t].double() * mask[i, t] for i in rows]
            mean, std = _group_stats_loop(values)
            for i, v in zip(rows, values):
                if mask[i, t]:
                    out[i, t] = (v - mean) / (std + eps) if norm_by_std else v - mean
    return out.to(turn_rewards.dtype)


def _grpo_loop(turn_rewards, turn_mask, group_ids, *, norm_by_std=True, eps=1e-6):
    mask = turn_mask.bool()
    ids = torch.as_tensor(group_ids).tolist()
    scores = [(turn_rewards[i].double() * mask[i]).sum() for i in range(len(ids))]
    out = torch.zeros(mask.shape, dtype=torch.float64)
    for i, g in enumerate(ids):
        mean, std = _group_stats_loop([scores[j] for j in range(len(ids)) if ids[j] == g])
        value = (scores[i] - mean) / (std + eps) if norm_by_std else scores[i] - mean
        out[i] = value * mask[i]
    return out.to(turn_rewards.dtype)


def _rloo_loop(turn_rewards, turn_mask, group_ids):
    mask = turn_mask.bool()
    ids = torch.as_tensor(group_ids).tolist()
    scores = [(turn_rewards[i].double() * mask[i]).sum() for i in range(len(ids))]
    out = torch.zeros(mask.shape, dtype=torch.float64)
    for i, g in enumerate(ids):
        others = [scores[j] for j in range(len(ids)) if ids[j] == g and j != i]
        baseline = torch.stack(others).mean() if others else 0.0
        out[i] = (scores[i] - baseline) * mask[i]
    return out.to(turn_rewards.dtype)


def _gigpo_loop(turn_rewards, turn_mask, group_ids, *, norm_by_std=True, eps=1e-6, gigpo_gamma=0.95,
                gigpo_omega=1.0, step_states=None):
    mask = turn_mask.bool()
    ids = torch.as_tensor(group_ids).tolist()
    episode = _grpo_loop(turn_rewards.double(), mask, group_ids, norm_by_std=norm_by_std, eps=eps)
    members: dict[Hashable, list[tuple[int, int]]] = defaultdict(list)
    for i, row in enumerate(step_states):
        for t in range(int(mask[i].sum())):
            members[(ids[i], row[t])].append((i, t))
    out = episode.clone()
    for steps in members.values():
        if len(steps) < 2:
            continue
        returns = []
        for i, t in steps:
            future = [turn_rewards[i, k].double() * gigpo_gamma ** (k - t) for k in range(t, int(mask[i].sum()))]
            returns.append(torch.stack(future).sum())
        mean, std = _group_stats_loop(returns)
        for (i, t), g in zip(steps, returns):
            out[i, t] += gigpo_omega * ((g - mean) / (std + eps) if norm_by_std else g - mean)
    return (out * mask).to(turn_rewards.dtype)


def _turn_rloo_loop(turn_rewards, turn_mask, group_ids):
    mask = turn_mask.bool()
    batch, turns = mask.shape
    ids = torch.as_tensor(group_ids).tolist()
    lengths = [int(mask[i].sum()) for i in range(batch)]
    to_go = [[sum(float(turn_rewards[i, k]) for k in range(t, lengths[i])) for t in range(turns)]
             for i in range(batch)]
    out = torch.zeros(batch, turns, dtype=torch.float64)
    for i in range(batch):
        for t in range(lengths[i]):
            others = [to_go[j][t] for j in range(batch) if j != i and ids[j] == ids[i] and mask[j, t]]
            out[i, t] = to_go[i][t] - (sum(others) / len(others) if others else 0.0)
    return out.to(turn_rewards.dtype)


def _to_token_level_loop(turn_adv: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    out = torch.zeros(response_mask.shape, dtype=turn_adv.dtype)
    for i in range(response_mask.shape[0]):
        k, inside = -1, False
        for pos in range(response_mask.shape[1]):
            if response_mask[i, pos]:
                k += 0 if inside else 1
                out[i, pos] = turn_adv[i, k]
            inside = bool(response_mask[i, pos])
    return out
