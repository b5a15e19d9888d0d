"""The PPO clipped surrogate with dual clip, aggregated as a token mean.

Shapes: ``B`` sequences in the micro-batch, ``L`` padded tokens.

Paper setting (docs/training.md, "RL"): ε_low = ``clip_low`` = 0.2,
ε_high = ``clip_high`` = 0.28 (the asymmetric "clip-higher" of DAPO), dual clip
c = ``dual_clip`` = 3.0 for negative advantages (Ye et al. 2020, "Mastering Complex
Control in MOBA Games with Deep RL"), token-mean aggregation, no KL term, no
entropy bonus. For one token with ratio ρ = π_θ / π_old and advantage A:

    clipped  = max(−A·ρ, −A·clip(ρ, 1 − ε_low, 1 + ε_high))      (standard PPO)
    loss_tok = min(clipped, −A·c)   if A < 0                        (dual clip)
             = clipped              otherwise

and the loss is Σ_tokens loss_tok · mask / num_tokens. With gradient accumulation
the caller passes ``num_tokens`` = the policy tokens of the whole mini-batch, so
that micro-batch losses add up to the mini-batch token mean exactly.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

LOG_RATIO_LIMIT = 20.0
"""|log ρ| is clamped to this before exp() so a wild token cannot overflow (loss only; stats see it)."""


class PPOStats(NamedTuple):
    """Detached per-call statistics, token means over the masked tokens (the trainer logs them)."""

    policy_loss: torch.Tensor
    """The token-mean loss (same value as the returned loss when ``num_tokens`` is None)."""
    clip_fraction: torch.Tensor
    """Share of tokens where the ε clip was active (the clipped term won)."""
    dual_clip_fraction: torch.Tensor
    """Share of tokens where the dual clip −A·c was active (only A < 0)."""
    approx_kl: torch.Tensor
    """k3 estimator of KL(π_old ‖ π_θ): mean of (ρ − 1) − log ρ; ≥ 0."""
    ratio_mean: torch.Tensor
    ratio_max: torch.Tensor
    num_tokens: torch.Tensor
    """Masked tokens in this call."""


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` [B, L] over ``mask`` [B, L] (0 when the mask is empty)."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def ppo_clip_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.28,
    dual_clip: float = 3.0,
    num_tokens: float | None = None,
) -> tuple[torch.Tensor, PPOStats]:
    """PPO-clip loss with dual clip, token-mean aggregated.

    Args:
        logprobs: [B, L] log π_θ(token) of the sampled tokens, with grad.
        old_logprobs: [B, L] log π_old(token) of the same tokens (no grad needed).
        advantages: [B, L] per-token advantage (turn advantage broadcast to its tokens).
        response_mask: [B, L] 1 on policy tokens, 0 on prompt/observation/template/pad.
        clip_low, clip_high: ε_low and ε_high; ρ is clipped to [1 − ε_low, 1 + ε_high].
        dual_clip: c > 1; for A < 0 the per-token loss is capped at −A·c.
        num_tokens: the token-mean denominator; default ``response_mask.sum()``.
    Returns:
        ``(loss, stats)``: a scalar with grad and :class:`PPOStats`.
    """
    shapes = {t.shape for t in (logprobs, old_logprobs, advantages, response_mask)}
    if len(shapes) != 1 or logprobs.dim() != 2:
        raise ValueError(
            "logprobs, old_logprobs, advantages and response_mask must share one [B, L] shape, got "
            f"{[tuple(t.shape) for t in (logprobs, old_logprobs, advantages, response_mask)]}"
        )
    if not (0 <= clip_low < 1 and clip_high >= 0 and dual_clip > 1):
        raise ValueError(f"need 0 <= clip_low < 1, clip_high >= 0, dual_clip > 1; got {clip_low}, {clip_high}, {dual_clip}")
    mask = response_mask.to(logprobs.dtype)  # [B, L]
    advantages = advantages.detach().to(logprobs.dtype)  # [B, L]
    log_ratio = (logprobs - old_logprobs.detach()).clamp(-LOG_RATIO_LIMIT, LOG_RATIO_LIMIT)  # [B, L]
    ratio = torch.exp(log_ratio)  # [B, L] ρ = π_θ / π_old
    unclipped = -advantages * ratio  # [B, L] −A·ρ
    clipped_ratio = torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)  # [B, L] clip(ρ, 1−ε_low, 1+ε_high)
    clipped = torch.maximum(unclipped, -advantages * clipped_ratio)  # [B, L] pessimistic PPO bound
    capped = torch.minimum(clipped, -advantages * dual_clip)  # [B, L] dual clip: at most −A·c
    per_token = torch.where(advantages < 0, capped, clipped)  # [B, L]
    denominator = mask.sum().clamp(min=1.0) if num_tokens is None else torch.as_tensor(float(num_tokens))
    loss = (per_token * mask).sum() / denominator  # token mean over the (mini-)batch
    with torch.no_grad():
        eps_active = (clipped > unclipped).to(mask.dtype)  # [B, L]
        dual_active = ((advantages < 0) & (capped < clipped)).to(mask.dtype)  # [B, L]
        kl = (ratio - 1.0) - log_ratio  # [B, L] k3 estimator
        real = mask.bool()
        stats = PPOStats(
            policy_loss=masked_mean(per_token, mask).detach(),
            clip_fraction=masked_mean(eps_active, mask),
            dual_clip_fraction=masked_mean(dual_active, mask),
            approx_kl=masked_mean(kl, mask),
            ratio_mean=masked_mean(ratio, mask),
            ratio_max=ratio[real].max() if real.any() else ratio.new_tensor(1.0),
            num_tokens=mask.sum(),
        )
    return loss, stats
