"""Per-step training metrics, namespaced (``rollout/``, ``reward/``, ``belief/``, ``adv/``, ``loss/``,
``judge/``, ``perf/``). docs/metrics.md defines every name written here.

Shapes: ``B`` rollouts, ``T`` turns (the most of any rollout).
Functions take plain tensors and trajectories and return ``{name: float}``; only the
trainer logs them.
"""

from __future__ import annotations

from typing import Sequence

import torch

from deltabelief.training.ppo_loss import PPOStats
from deltabelief.trajectory import Trajectory


def _mean(values: torch.Tensor) -> float:
    return float(values.float().mean()) if values.numel() else 0.0


def _std(values: torch.Tensor) -> float:
    return float(values.float().std(unbiased=False)) if values.numel() else 0.0


def rollout_metrics(trajectories: Sequence[Trajectory]) -> dict[str, float]:
    """Outcome and move-quality rates. Rates of statuses are shares of all moves played."""
    if not trajectories:
        raise ValueError("rollout_metrics needs at least one trajectory")
    turns = torch.tensor([t.num_turns for t in trajectories], dtype=torch.float32)  # [B]
    solved = torch.tensor([t.solved for t in trajectories], dtype=torch.float32)  # [B]
    statuses = [s for t in trajectories for s in t.statuses()]
    moves = max(len(statuses), 1)
    lengths = torch.tensor([len(turn.token_ids) for t in trajectories for turn in t.turns], dtype=torch.float32)
    out = {
        "rollout/success_rate": _mean(solved),
        "rollout/num_turns_mean": _mean(turns),
        "rollout/num_turns_max": float(turns.max()),
        "rollout/num_turns_solved_mean": _mean(turns[solved.bool()]),
        "rollout/move_tokens_mean": _mean(lengths),
        "rollout/empty_move_rate": float((lengths == 0).sum()) / moves,
    }
    for status in ("invalid", "repeated", "unanswerable"):
        out[f"rollout/{status}_rate"] = statuses.count(status) / moves
    judged = [s for s in statuses if s in ("yes", "no")]
    out["judge/yes_rate"] = judged.count("yes") / max(len(judged), 1)
    out["judge/answered_moves"] = float(len(judged))
    return out


def information_metrics(trajectories: Sequence[Trajectory], kb) -> dict[str, float]:
    """Exact information per question in knowledge-base games (``info/``; deltabelief.information)."""
    from deltabelief.information import question_bits

    bits = torch.tensor([b for t in trajectories
                         for b in question_bits(kb, [x.move for x in t.turns], t.statuses(), t.target.answer)])
    solved = [t.num_turns for t in trajectories if t.solved]
    return {
        "info/bits_per_question": _mean(bits),
        "info/zero_gain_share": _mean((bits == 0).float()),
        "info/questions_to_solve": sum(solved) / len(solved) if solved else 0.0,
    }


def reward_metrics(rewards: torch.Tensor, turn_mask: torch.Tensor) -> dict[str, float]:
    """rewards, turn_mask: [B, T]. Per-turn mean and the mean of per-rollout sums."""
    mask = turn_mask.bool()
    per_rollout = (rewards * mask).sum(dim=1)  # [B]
    return {
        "reward/turn_mean": _mean(rewards[mask]),
        "reward/rollout_sum_mean": _mean(per_rollout),
        "reward/rollout_sum_std": _std(per_rollout),
    }


def belief_metrics(
    log_beliefs: torch.Tensor, belief_mask: torch.Tensor, delta: torch.Tensor, delta_mask: torch.Tensor,
    num_nonfinite: int = 0, num_excluded: int = 0,
) -> dict[str, float]:
    """log_beliefs, belief_mask: [B, T+1]; delta, delta_mask: [B, T] (ΔBelief_t of turn t in column t−1)."""
    scored = belief_mask.bool()
    rows = scored.any(dim=1)  # [B] trajectories that were scored
    last = scored.sum(dim=1).clamp(min=1) - 1  # [B] index of log b_N
    final = log_beliefs.gather(1, last[:, None])[:, 0][rows]  # [B'] log b_N
    first = log_beliefs[:, 0][rows]  # [B'] log b_0
    d = delta[delta_mask.bool()]
    return {
        "belief/delta_mean": _mean(d),
        "belief/delta_positive_mean": _mean(d.clamp(min=0)),
        "belief/delta_positive_rate": _mean((d > 0).float()),
        "belief/log_belief_initial_mean": _mean(first),
        "belief/log_belief_final_mean": _mean(final),
        "belief/belief_final_mean": _mean(final.exp()),
        "belief/num_nonfinite": float(num_nonfinite),
        "belief/num_excluded": float(num_excluded),
    }


def advantage_metrics(turn_adv: torch.Tensor, turn_mask: torch.Tensor) -> dict[str, float]:
    """turn_adv, turn_mask: [B, T]; statistics over played turns."""
    values = turn_adv[turn_mask.bool()]
    return {
        "adv/mean": _mean(values),
        "adv/std": _std(values),
        "adv/max": float(values.max()) if values.numel() else 0.0,
        "adv/min": float(values.min()) if values.numel() else 0.0,
        "adv/zero_rate": _mean((values == 0).float()),
    }


def loss_metrics(stats: Sequence[PPOStats], grad_norms: Sequence[float], lr: float,
                 old_logprob_gap: float | None = None, old_logprob_gap_max: float | None = None) -> dict[str, float]:
    """Token-weighted means of the micro-batch :class:`PPOStats` of one RL step.

    ``old_logprob_gap``/``old_logprob_gap_max``: mean/max |recorded sampling log-prob − recomputed
    log π_old| over the policy tokens (None: not measured).
    """
    gap = {} if old_logprob_gap is None else {"loss/old_logprob_gap": old_logprob_gap}
    if old_logprob_gap_max is not None:
        gap["loss/old_logprob_gap_max"] = old_logprob_gap_max
    if not stats:
        return {"loss/lr": lr, **gap}
    weights = torch.stack([s.num_tokens for s in stats]).float()  # [M] tokens per micro-batch
    share = weights / weights.sum().clamp(min=1)

    def weighted(name: str) -> float:
        return float((torch.stack([getattr(s, name) for s in stats]).float() * share).sum())

    return {
        "loss/policy": weighted("policy_loss"),
        "loss/clip_fraction": weighted("clip_fraction"),
        "loss/dual_clip_fraction": weighted("dual_clip_fraction"),
        "loss/approx_kl": weighted("approx_kl"),
        "loss/ratio_mean": weighted("ratio_mean"),
        "loss/ratio_max": float(torch.stack([s.ratio_max for s in stats]).max()),
        "loss/grad_norm": float(sum(grad_norms) / max(len(grad_norms), 1)),
        "loss/num_optimizer_steps": float(len(grad_norms)),
        "loss/lr": lr,
        **gap,
    }


def perf_metrics(seconds: dict[str, float], policy_tokens: int, trained_tokens: int) -> dict[str, float]:
    """``seconds`` per stage (rollout, belief, reward_adv, old_logprobs, update, step) -> ``perf/``."""
    out = {f"perf/seconds_{stage}": value for stage, value in seconds.items()}
    step = seconds.get("step", 0.0)
    update = seconds.get("update", 0.0)
    out["perf/policy_tokens_per_s"] = policy_tokens / step if step > 0 else 0.0
    out["perf/update_tokens_per_s"] = trained_tokens / update if update > 0 else 0.0
    return out


# The timed stages of an RL step (``perf/seconds_<stage>``; their sum is about ``perf/seconds_step``).
STEP_STAGES = ("rollout", "belief", "reward_adv", "old_logprobs", "update")


def stage_shares(history: list[dict[str, float]]) -> dict[str, float]:
    """Mean over steps of each stage's share of the step's wall time (a stage not logged: 0)."""
    return {stage: sum(m.get(f"perf/seconds_{stage}", 0.0) / m["perf/seconds_step"] for m in history) / len(history)
            for stage in STEP_STAGES}
