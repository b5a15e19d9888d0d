"""Per-turn rewards from ΔBelief, the game outcome and per-move penalties.

Paper equation (docs/method.md, §2), for turn t = 1..N of one rollout:

    r_t = r_eog + λ·max(ΔBelief_t, 0) + pen_t
    r_eog = win_reward·[solved] − turn_penalty·N

Symbol -> name (config field ``reward.<name>``, argument ``<name>``, metric ``reward/<name>``):

- λ -> ``belief_reward_weight`` (0.1); max(·, 0) -> ``clip_negative_belief`` (True: the paper's
  positive part; False: raw ΔBelief).
- win term of r_eog -> ``win_reward`` (2.0); r_p, the per-turn efficiency penalty -> ``turn_penalty`` (0.05).
- pen_t -> ``invalid_penalty`` (−5.0), ``repeated_penalty`` (−1.0), ``unanswerable_penalty`` (−5.0),
  chosen by the move's status (:data:`deltabelief.games.base.STATUSES`).

The winning turn (status in ``SOLVED_STATUSES``) gets no belief term: its reward is the outcome.
Every other turn, including invalid and repeated ones, gets the belief term.

Where r_eog goes is the caller's choice, from the estimator's declared ``level``
(:mod:`deltabelief.advantages`), never from its name: ``outcome_on="every_turn"`` adds r_eog to
every turn (turn-level estimators: this is how outcome credit reaches each turn);
``"last_turn"`` adds it once, to the last turn (trajectory-level estimators sum the turns).

Shape notation: B rollouts, T turns (the most of any rollout).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import torch

from deltabelief.config import RewardConfig
from deltabelief.types import SOLVED_STATUSES, STATUSES

STATUS_CODES: dict[str, int] = {status: code for code, status in enumerate(STATUSES)}
"""Integer code of each status, for the ``statuses`` tensor form (−1 or any code on masked turns)."""

OutcomePlacement = Literal["every_turn", "last_turn"]


def status_codes(statuses: Sequence[Sequence[str]], num_turns: int) -> torch.Tensor:
    """Statuses as a [B, T] long tensor of :data:`STATUS_CODES`, −1 past each rollout's last turn."""
    codes = torch.full((len(statuses), num_turns), -1, dtype=torch.long)  # [B, T]
    for row, turns in enumerate(statuses):
        if len(turns) > num_turns:
            raise ValueError(f"rollout {row} has {len(turns)} statuses but only {num_turns} turn columns")
        for t, status in enumerate(turns):
            if status not in STATUS_CODES:
                raise ValueError(f"rollout {row}, turn {t + 1}: unknown status {status!r}; statuses: {list(STATUSES)}")
            codes[row, t] = STATUS_CODES[status]
    return codes


@dataclass
class RewardComponents:
    """The three terms of r_t, each [B, T] and 0 on masked turns; their sum is the reward."""

    outcome: torch.Tensor
    """r_eog where it is placed (every turn or the last turn)."""
    belief: torch.Tensor
    """λ·max(ΔBelief_t, 0) (or λ·ΔBelief_t without clipping); 0 on the winning turn."""
    penalty: torch.Tensor
    """pen_t by status."""

    def total(self) -> torch.Tensor:
        return self.outcome + self.belief + self.penalty  # [B, T] r_t


def _check_prefix(turn_mask: torch.Tensor) -> None:
    """Played turns must come first in each row: turns 1..N, then padding."""
    columns = torch.arange(turn_mask.shape[1], device=turn_mask.device)[None, :]  # [1, T]
    prefix = columns < turn_mask.sum(dim=1, keepdim=True)  # [B, T]
    bad = (prefix != turn_mask).any(dim=1).nonzero().flatten().tolist()
    if bad:
        raise ValueError(f"turn_mask rows {bad[:5]} have a gap: played turns must be 1..N followed by padding")


def _last_turn_mask(turn_mask: torch.Tensor) -> torch.Tensor:
    """[B, T] bool: True on each rollout's last valid turn."""
    num_turns = turn_mask.sum(dim=1)  # [B]
    columns = torch.arange(turn_mask.shape[1], device=turn_mask.device)[None, :]  # [1, T]
    return (columns == (num_turns - 1)[:, None]) & turn_mask  # [B, T]


def reward_components(
    delta_belief: torch.Tensor,
    statuses: Sequence[Sequence[str]] | torch.Tensor,
    turn_mask: torch.Tensor,
    solved: torch.Tensor | Sequence[bool],
    *,
    belief_reward_weight: float = 0.1,
    win_reward: float = 2.0,
    turn_penalty: float = 0.05,
    invalid_penalty: float = -5.0,
    repeated_penalty: float = -1.0,
    unanswerable_penalty: float = -5.0,
    clip_negative_belief: bool = True,
    outcome_on: OutcomePlacement = "every_turn",
) -> RewardComponents:
    """The terms of r_t; see :func:`turn_rewards` for the arguments."""
    mask = turn_mask.bool()  # [B, T]
    if delta_belief.shape != mask.shape:
        raise ValueError(f"delta_belief {tuple(delta_belief.shape)} and turn_mask {tuple(mask.shape)} differ")
    codes = statuses if isinstance(statuses, torch.Tensor) else status_codes(statuses, mask.shape[1])  # [B, T]
    if codes.shape != mask.shape:
        raise ValueError(f"statuses {tuple(codes.shape)} and turn_mask {tuple(mask.shape)} differ")
    codes = codes.to(mask.device)
    _check_prefix(mask)
    solved = torch.as_tensor(solved, dtype=torch.bool, device=mask.device)  # [B]
    zeros = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)  # [B, T]

    num_turns = mask.sum(dim=1).float()  # [B] N, turns used
    r_eog = win_reward * solved.float() - turn_penalty * num_turns  # [B] r_eog = win·[solved] − r_p·N
    if outcome_on == "every_turn":
        placed = mask  # [B, T]
    elif outcome_on == "last_turn":
        placed = _last_turn_mask(mask)  # [B, T]
    else:
        raise ValueError(f"outcome_on must be 'every_turn' or 'last_turn', got {outcome_on!r}")
    outcome = torch.where(placed, r_eog[:, None].expand_as(zeros), zeros)  # [B, T]

    won = torch.zeros_like(mask)  # [B, T] the winning turn
    for status in SOLVED_STATUSES:
        won |= codes == STATUS_CODES[status]
    gain = delta_belief.float().clamp(min=0.0) if clip_negative_belief else delta_belief.float()  # max(ΔBelief_t, 0)
    belief = torch.where(mask & ~won, belief_reward_weight * gain, zeros)  # [B, T] λ·max(ΔBelief_t, 0)

    penalty = zeros.clone()  # [B, T] pen_t by status
    for status, value in (("invalid", invalid_penalty), ("repeated", repeated_penalty),
                          ("unanswerable", unanswerable_penalty)):
        penalty = torch.where(mask & (codes == STATUS_CODES[status]), torch.full_like(zeros, value), penalty)
    return RewardComponents(outcome, belief, penalty)


def turn_rewards(
    delta_belief: torch.Tensor,
    statuses: Sequence[Sequence[str]] | torch.Tensor,
    turn_mask: torch.Tensor,
    solved: torch.Tensor | Sequence[bool],
    *,
    belief_reward_weight: float = 0.1,
    win_reward: float = 2.0,
    turn_penalty: float = 0.05,
    invalid_penalty: float = -5.0,
    repeated_penalty: float = -1.0,
    unanswerable_penalty: float = -5.0,
    clip_negative_belief: bool = True,
    outcome_on: OutcomePlacement = "every_turn",
) -> torch.Tensor:
    """r_t for every turn of every rollout.

    Args:
        delta_belief: [B, T] ΔBelief_t (column t−1 holds turn t); 0 where it was not scored.
        statuses: per rollout a list of status strings (its turns), or a [B, T] long tensor of
            :data:`STATUS_CODES`.
        turn_mask: [B, T] bool, True on turns that were played (the game's turns, not where
            ΔBelief was defined).
        solved: [B] bool, the rollout ended in success.
        outcome_on: ``"every_turn"`` or ``"last_turn"``: where r_eog is added.
    Returns:
        [B, T] float32 r_t; 0 on turns that were not played.
    """
    return reward_components(
        delta_belief, statuses, turn_mask, solved,
        belief_reward_weight=belief_reward_weight, win_reward=win_reward, turn_penalty=turn_penalty,
        invalid_penalty=invalid_penalty, repeated_penalty=repeated_penalty,
        unanswerable_penalty=unanswerable_penalty, clip_negative_belief=clip_negative_belief,
        outcome_on=outcome_on,
    ).total()


def step_rewards(
    delta_belief: torch.Tensor,
    statuses: Sequence[Sequence[str]] | torch.Tensor,
    turn_mask: torch.Tensor,
    solved: torch.Tensor | Sequence[bool],
    *,
    reward: RewardConfig,
    unanswerable_as_invalid: bool,
    estimator_level: str,
) -> RewardComponents:
    """The terms of r_t as both trainers (single-machine and verl) compute them.

    Decided here once: r_eog goes on every turn for a turn-level estimator and on the last turn for
    a trajectory-level one (``estimator_level``, the estimator's declared level, never its name);
    an 'unanswerable' move costs ``reward.invalid_penalty`` when ``unanswerable_as_invalid``
    (``judge.unanswerable_as_invalid``), else ``reward.unanswerable_penalty``.
    """
    placements = {"turn": "every_turn", "trajectory": "last_turn"}
    if estimator_level not in placements:
        raise ValueError(f"estimator_level must be one of {sorted(placements)}, got {estimator_level!r}")
    return reward_components(
        delta_belief, statuses, turn_mask, solved,
        belief_reward_weight=reward.belief_reward_weight, win_reward=reward.win_reward,
        turn_penalty=reward.turn_penalty, invalid_penalty=reward.invalid_penalty,
        repeated_penalty=reward.repeated_penalty,
        unanswerable_penalty=reward.invalid_penalty if unanswerable_as_invalid else reward.unanswerable_penalty,
        clip_negative_belief=reward.clip_negative_belief, outcome_on=placements[estimator_level],
    )


def trajectory_score(turn_rewards: torch.Tensor, turn_mask: torch.Tensor) -> torch.Tensor:
    """[B] Σ_t r_t over played turns: the one score per rollout that trajectory estimators use.

    With ``outcome_on="last_turn"`` this is r_eog + Σ_t (λ·max(ΔBelief_t, 0) + pen_t).
    """
    return (turn_rewards * turn_mask.to(turn_rewards.dtype)).sum(dim=1)  # [B]
