"""Per-turn ΔBelief rewards in verl's token layout: r_t at the last token of turn t.

verl trains on ``token_level_rewards`` [B, L] over the response tokens. This reward manager turns
a rollout batch plus its scored beliefs into that tensor:

1. ΔBelief_t = log b_t − log b_{t−1} (:func:`deltabelief.belief.delta_beliefs`);
2. r_t = r_eog + λ·max(ΔBelief_t, 0) + pen_t from :func:`deltabelief.rewards.step_rewards`, the one
   function both trainers call (it places r_eog by the estimator's level and decides what an
   'unanswerable' move costs);
3. r_t written at the last token of the policy's t-th message (:func:`place_turn_rewards`), which
   is exactly where :mod:`.estimator` reads it back.

It is registered in verl's reward-manager registry (``verl.workers.reward_manager``) as
``delta_belief`` and follows that interface (``__call__(data, return_dict)`` -> reward tensor). The
per-turn beliefs it needs come from the actor's log-probabilities (:mod:`.belief`), which only the
trainer process can reach; the trainer hook (:mod:`.runner`) puts them in the batch as
``db_log_beliefs`` [B, T+1] and ``db_belief_mask`` [B, T+1] before calling it.

Inputs read from the batch (written by the agent loop, :mod:`.agent_loop`):
``response_mask`` [B, L]; non-tensor ``db_statuses`` (the judge's status per turn), ``db_solved``.

Shape notation: B rollouts, L response tokens, T turns (the most of any rollout).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from verl.protocol import DataProto
from verl.workers.reward_manager import register
from verl.workers.reward_manager.abstract import AbstractRewardManager

from deltabelief.advantages import get_estimator, turn_runs
from deltabelief.belief import delta_beliefs
from deltabelief.config import RewardConfig
from deltabelief.rewards import step_rewards
from deltabelief.training.metrics import belief_metrics, reward_metrics

log = logging.getLogger(__name__)

REWARD_MANAGER_NAME = "delta_belief"
BELIEF_KEY = "db_log_beliefs"
BELIEF_MASK_KEY = "db_belief_mask"


def place_turn_rewards(turn_rewards: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Write r_t at the last token of the k-th run of policy tokens.

    Args:
        turn_rewards: [B, T] r_t (column t−1 holds turn t).
        response_mask: [B, L], one contiguous run of 1s per played turn.
    Returns:
        [B, L] float32, r_t at each turn's last token and 0 elsewhere.
    Raises:
        ValueError: a row has more runs than ``turn_rewards`` has columns.
    """
    ends, run, num_turns = turn_runs(response_mask)  # [B, L], [B, L], [B]
    too_many = num_turns > turn_rewards.shape[1]  # [B]
    if too_many.any():
        row = int(too_many.nonzero()[0])
        raise ValueError(f"row {row}: {int(num_turns[row])} policy turns but only {turn_rewards.shape[1]} rewards")
    out = torch.zeros(response_mask.shape, dtype=torch.float32, device=response_mask.device)  # [B, L]
    rows, cols = ends.nonzero(as_tuple=True)
    out[rows, cols] = turn_rewards[rows, run[rows, cols]].float()  # r_t on turn t's last token
    return out


def _statuses(data: DataProto, num_turns: torch.Tensor) -> list[list[str]]:
    """Per row, the judge's statuses; their count must equal the row's policy turns."""
    statuses = [list(s) for s in data.non_tensor_batch["db_statuses"]]
    for row, (row_statuses, turns) in enumerate(zip(statuses, num_turns.tolist())):
        if len(row_statuses) != turns:
            raise ValueError(f"row {row}: {len(row_statuses)} statuses but {turns} runs of policy tokens "
                             "in response_mask (was the rollout cut at rollout.response_length?)")
    return statuses


@register(REWARD_MANAGER_NAME)
class DeltaBeliefRewardManager(AbstractRewardManager):
    """verl reward manager for ΔBelief-RL: token-level r_t from beliefs, statuses and outcomes.

    Args:
        tokenizer, num_examine, compute_score, reward_fn_key: verl's reward-manager arguments
            (unused: rewards come from beliefs and the judge's statuses, not from decoded text).
        reward: the reward settings (λ, win reward, penalties); ``RewardConfig()`` when omitted.
        estimator_name: core estimator name; its level decides where r_eog goes.
        unanswerable_as_invalid: penalise an 'unanswerable' move with ``reward.invalid_penalty``
            (``judge.unanswerable_as_invalid``, as the single-machine trainer does).
    """

    def __init__(self, tokenizer: Any = None, num_examine: int = 0, compute_score: Any = None,
                 reward_fn_key: str = "data_source", *, reward: RewardConfig | None = None,
                 estimator_name: str = "turn_grpo", unanswerable_as_invalid: bool = True, **kwargs: Any):
        if kwargs:
            raise TypeError(f"unexpected argument(s) {sorted(kwargs)} for {type(self).__name__}")
        self.tokenizer = tokenizer
        self.reward = reward if reward is not None else RewardConfig()
        self.estimator_level = get_estimator(estimator_name).level
        self.unanswerable_as_invalid = unanswerable_as_invalid

    def __call__(self, data: DataProto, return_dict: bool = False) -> torch.Tensor | dict[str, Any]:
        """[B, L] token-level rewards; with ``return_dict`` also ``reward_extra_info`` and ``metrics``."""
        response_mask = data.batch["response_mask"]  # [B, L]
        _, _, num_turns = turn_runs(response_mask)  # [B]
        statuses = _statuses(data, num_turns)
        width = int(num_turns.max()) if len(num_turns) else 0
        turn_mask = torch.arange(width)[None, :] < num_turns[:, None]  # [B, T]
        log_beliefs, belief_mask = data.batch[BELIEF_KEY], data.batch[BELIEF_MASK_KEY]  # [B, T'+1]
        if log_beliefs.shape[1] < width + 1:
            raise ValueError(f"{BELIEF_KEY} has {log_beliefs.shape[1]} columns for {width} turns (needs T+1)")
        delta = delta_beliefs(log_beliefs[:, : width + 1].float(), belief_mask[:, : width + 1].bool())  # [B, T]
        solved = torch.as_tensor(np.asarray(data.non_tensor_batch["db_solved"], dtype=bool))  # [B]
        turn_rewards = step_rewards(delta.delta, statuses, turn_mask, solved, reward=self.reward,
                                    unanswerable_as_invalid=self.unanswerable_as_invalid,
                                    estimator_level=self.estimator_level).total()  # [B, T] r_t
        reward_tensor = place_turn_rewards(turn_rewards, response_mask)  # [B, L]
        if not return_dict:
            return reward_tensor
        return {
            "reward_tensor": reward_tensor,
            "turn_rewards": turn_rewards,
            "reward_extra_info": {"turn_rewards": [row[m].tolist() for row, m in zip(turn_rewards, turn_mask)]},
            "metrics": _metrics(turn_rewards, turn_mask, log_beliefs[:, : width + 1], belief_mask[:, : width + 1],
                                delta, statuses, solved),
        }


def _metrics(turn_rewards: torch.Tensor, turn_mask: torch.Tensor, log_beliefs: torch.Tensor,
             belief_mask: torch.Tensor, delta, statuses: list[list[str]], solved: torch.Tensor) -> dict[str, float]:
    """The step's ``reward/``, ``belief/``, ``rollout/`` and ``judge/`` metrics, named as in docs/metrics.md."""
    out = {**reward_metrics(turn_rewards, turn_mask),
           **belief_metrics(log_beliefs, belief_mask, delta.delta, delta.turn_mask, delta.num_nonfinite,
                            int((~belief_mask.any(dim=1)).sum()))}
    moves = [status for row in statuses for status in row]
    turns = turn_mask.sum(dim=1).float()  # [B] N
    out["rollout/success_rate"] = float(solved.float().mean()) if len(solved) else 0.0
    out["rollout/num_turns_mean"] = float(turns.mean()) if len(turns) else 0.0
    for status in ("invalid", "repeated", "unanswerable"):
        out[f"rollout/{status}_rate"] = moves.count(status) / max(len(moves), 1)
    judged = [m for m in moves if m in ("yes", "no")]
    out["judge/yes_rate"] = judged.count("yes") / max(len(judged), 1)
    return out
