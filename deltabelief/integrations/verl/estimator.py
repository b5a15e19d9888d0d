"""Our credit-assignment estimators as verl advantage estimators (``register_adv_est``).

verl hands an estimator ``token_level_rewards`` [B, L], ``response_mask`` [B, L], ``index`` (the
group uid of every row, a numpy array of strings) and ``config`` (the ``algorithm`` section). The
reward manager of this package (:mod:`.reward_manager`) encodes r_t, the reward of turn t, at the
last token of the policy's t-th message (the t-th contiguous run of 1s in ``response_mask``) and
0 everywhere else. The adapter here decodes that back to ``turn_rewards`` [B, T], calls the core
estimator from :mod:`deltabelief.advantages` and spreads the per-turn advantages over each turn's
tokens with :func:`deltabelief.advantages.to_token_level`; nothing is re-implemented.

Registered names: ``delta_belief_turn_grpo`` (ΔBelief-RL's turn-wise GRPO), ``delta_belief_turn_rloo``
(its unbiased variant: reward-to-go with a leave-one-out baseline per turn index), ``delta_belief_grpo``
and ``delta_belief_rloo`` (trajectory-level baselines through the same path).

Options: ``norm_by_std`` is verl's own ``algorithm.norm_adv_by_std_in_grpo``; the others
(``include_finished``, ``eps``, named as the fields of ``EstimatorConfig``) come from our
``deltabelief.estimator`` section, which :class:`.runner.DeltaBeliefTrainer` hands to
:func:`use_estimator_options` when it is built. verl passes an estimator only the ``algorithm``
section, and that section must stay convertible to verl's ``AlgoConfig`` (no keys of ours in it).
Before any call of :func:`use_estimator_options` every option takes its ``EstimatorConfig`` default
(the reference's values).

Shape notation: B rows (rollouts), L response tokens, T turns (the most of any row).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from verl.trainer.ppo.core_algos import register_adv_est

from deltabelief.advantages import get_estimator, to_token_level, turn_runs
from deltabelief.config import EstimatorConfig
from deltabelief.integrations.verl.config_gen import ESTIMATOR_PREFIX, VERL_ESTIMATORS

_options = EstimatorConfig()
"""The estimator options of the run this process trains (set by :func:`use_estimator_options`)."""


def use_estimator_options(options: EstimatorConfig) -> None:
    """Make ``options`` (our ``estimator`` section) the options of every registered estimator.

    verl calls estimators on the driver, in the process that builds the trainer, so the trainer
    sets them there once; verl gives estimators no other way to receive options of ours.
    """
    global _options
    if not isinstance(options, EstimatorConfig):
        raise TypeError(f"options must be an EstimatorConfig, got {type(options).__name__}")
    _options = options


def decode_turn_rewards(token_level_rewards: torch.Tensor, response_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-turn rewards from their token-level encoding.

    Args:
        token_level_rewards: [B, L], r_t at the last token of turn t, 0 elsewhere.
        response_mask: [B, L].
    Returns:
        ``(turn_rewards [B, T] float32, turn_mask [B, T] bool)``.
    Raises:
        ValueError: a non-zero reward on any other token (naming row and column): the rewards were
        not written by this package's reward manager (for example verl's outcome reward on the
        last response token, or a per-token KL penalty, which turn-wise estimators cannot take).
    """
    if token_level_rewards.shape != response_mask.shape or token_level_rewards.dim() != 2:
        raise ValueError(f"token_level_rewards {tuple(token_level_rewards.shape)} and response_mask "
                         f"{tuple(response_mask.shape)} must both be [B, L]")
    ends, run, num_turns = turn_runs(response_mask)
    stray = (token_level_rewards != 0) & ~ends  # [B, L]
    if stray.any():
        row, col = (int(v) for v in stray.nonzero()[0])
        raise ValueError(
            f"row {row}, token {col}: reward {float(token_level_rewards[row, col])} is not on the last token "
            "of a policy turn; per-turn rewards must come from deltabelief's reward manager "
            "(and algorithm.use_kl_in_reward must be false)")
    width = int(num_turns.max()) if num_turns.numel() else 0
    turns = torch.arange(width, device=response_mask.device)[None, :]  # [1, T]
    turn_mask = turns < num_turns[:, None]  # [B, T]
    turn_rewards = torch.zeros(turn_mask.shape, dtype=torch.float32, device=response_mask.device)  # [B, T]
    rows, cols = ends.nonzero(as_tuple=True)
    turn_rewards[rows, run[rows, cols]] = token_level_rewards[rows, cols].float()  # r_t from turn t's last token
    return turn_rewards, turn_mask


def estimator_options(name: str, config: Any) -> dict[str, Any]:
    """Keyword options of core estimator ``name``: ours (:func:`use_estimator_options`), with
    ``norm_by_std`` taken from verl's ``algorithm.norm_adv_by_std_in_grpo`` when ``config`` has it."""
    merged = dataclasses.asdict(_options)
    norm = config.get("norm_adv_by_std_in_grpo") if config is not None else None
    if norm is not None:
        merged["norm_by_std"] = bool(norm)
    return {option: merged[option] for option in get_estimator(name).options}


def make_verl_estimator(name: str):
    """A verl estimator function running core estimator ``name`` on decoded per-turn rewards."""

    def compute(token_level_rewards: torch.Tensor, response_mask: torch.Tensor, index: Any = None,
                config: Any = None, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        turn_rewards, turn_mask = decode_turn_rewards(token_level_rewards, response_mask)  # [B, T]
        if index is None:
            raise ValueError("group estimators need verl's uid index (data.non_tensor_batch['uid']); got None")
        with torch.no_grad():
            turn_adv = get_estimator(name)(turn_rewards, turn_mask, list(index), **estimator_options(name, config))
            advantages = to_token_level(turn_adv, response_mask, turn_mask)  # [B, L]
        return advantages, advantages  # verl's group estimators return advantages as returns too

    compute.__name__ = f"compute_{ESTIMATOR_PREFIX}{name}_advantage"
    compute.__doc__ = f"verl estimator ``{ESTIMATOR_PREFIX}{name}``: core estimator ``{name}`` on per-turn rewards."
    return compute


ESTIMATOR_FNS = {name: register_adv_est(ESTIMATOR_PREFIX + name)(make_verl_estimator(name)) for name in VERL_ESTIMATORS}
"""Core estimator name -> the function registered with verl as ``delta_belief_<name>``."""
