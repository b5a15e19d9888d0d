"""The optimizer and LR schedule shared by SFT and RL: AdamW (paper: β 0.9/0.95, wd 0.01)."""

from __future__ import annotations

import torch

from deltabelief.config import OptimConfig


def build_optimizer(params: list[torch.nn.Parameter], optim: OptimConfig, lr: float | None = None) -> torch.optim.AdamW:
    """AdamW over ``params`` with ``optim``'s betas and weight decay (``lr`` overrides ``optim.lr``).

    Uses the fused kernel (one pass over each tensor; ~5x faster on CPU, where the optimizer
    step is memory-bound) when every parameter is a floating tensor on CPU or CUDA.
    """
    if not params:
        raise ValueError("no trainable parameters: is every weight frozen?")
    if len(optim.betas) != 2:
        raise ValueError(f"optim.betas must hold two numbers, got {optim.betas}")
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(params, lr=optim.lr if lr is None else lr, betas=(optim.betas[0], optim.betas[1]),
                             weight_decay=optim.weight_decay, fused=fused)


def build_scheduler(optimizer: torch.optim.Optimizer, warmup_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup_steps`` scheduler steps, then constant."""
    if warmup_steps < 0:
        raise ValueError(f"optim.warmup_steps must be >= 0, got {warmup_steps}")
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    )
