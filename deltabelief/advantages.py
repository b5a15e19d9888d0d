"""Credit assignment: per-turn rewards -> per-turn advantages, one registry for every estimator.

Every estimator has one signature::

    fn(turn_rewards[B, T], turn_mask[B, T], group_ids[B], *, <options>, step_states=None) -> [B, T]

and declares a ``level``: ``"turn"`` estimators want r_eog on every turn, ``"trajectory"``
estimators want it once (``rewards.turn_rewards(outcome_on=...)``; the caller reads the level,
rewards never look at an estimator's name). The keyword options are named exactly like the fields
of ``EstimatorConfig`` (``include_finished``, ``norm_by_std``, ``eps``, ``gigpo_gamma``,
``gigpo_omega``), and :attr:`Estimator.options` lists the ones an estimator reads, so a caller
passes ``{name: getattr(config.estimator, name) for name in est.options}``.

Shape notation: B rollouts (all groups together), T turns (the most of any rollout),
G groups (rollouts of one target share a group id), L tokens.

Estimators (advantages are 0 on turns that were not played):

- ``turn_grpo`` (ΔBelief-RL's turn-wise GRPO): A[i,t] = (R[i,t] − mean_g R[·,t]) / (std_g R[·,t] + eps).
- ``grpo`` (StarPO / GRPO, Shao et al. 2024): one score S_i = Σ_t R[i,t], A_i = (S_i − mean_g S) / (std_g S + eps),
  the same on every turn.
- ``rloo`` (Ahmadian et al. 2024): A_i = S_i − mean_{j∈g, j≠i} S_j, the same on every turn.
- ``gigpo`` (Feng et al. 2025, GiGPO): A[i,t] = A_episode(i) + ω·A_step(i,t), the step advantage a
  z-score of the discounted return within the group of steps taken from the same state.
- ``turn_rloo`` (the unbiased turn-level variant): A[i,t] = G[i,t] − mean_{j∈g, j≠i, j played t} G[j,t],
  G[i,t] = Σ_{k≥t} R[i,k] the reward-to-go. The baseline depends only on the other rollouts, never on
  when rollout i itself stops, so the policy gradient stays unbiased when the policy controls
  termination (docs/method.md, section 3).

Group statistics use the unbiased std (n − 1); a group with one member gets mean 0 and std 1
(as verl's GRPO). They are computed in float64 so that a zero-variance group gives exactly 0.
Each vectorised estimator has a loop version that the tests compare it with (tests/estimator_oracles.py).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable, Hashable, Literal

import torch

from deltabelief.registry import Registry

Level = Literal["turn", "trajectory"]
LEVELS: tuple[str, ...] = ("turn", "trajectory")


@dataclass(frozen=True)
class Estimator:
    name: str
    level: Level
    """``"turn"``: r_eog on every turn; ``"trajectory"``: r_eog on the last turn only."""
    fn: Callable[..., torch.Tensor]
    options: tuple[str, ...]
    """Keyword options the estimator reads; each is an ``EstimatorConfig`` field name."""
    needs_step_states: bool = False
    """True: the caller must pass ``step_states``, the game's state before every move (GiGPO)."""

    def __call__(self, turn_rewards, turn_mask, group_ids, *, step_states=None, **options) -> torch.Tensor:
        return self.fn(turn_rewards, turn_mask, group_ids, step_states=step_states, **options)


ESTIMATORS: Registry[Estimator] = Registry("estimator")
_ESTIMATORS = ESTIMATORS  # its former name, which the registry test swaps for a copy


def register_estimator(name: str, level: Level = "turn", *, needs_step_states: bool = False) -> Callable:
    """Decorator: register ``fn`` under ``name``; a duplicate name or an unknown level raises."""
    if level not in LEVELS:
        raise ValueError(f"estimator {name!r}: level must be one of {list(LEVELS)}, got {level!r}")

    def wrap(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        params = inspect.signature(fn).parameters.values()
        options = tuple(p.name for p in params if p.kind is p.KEYWORD_ONLY and p.name != "step_states")
        ESTIMATORS.add(name, Estimator(name, level, fn, options, needs_step_states))
        return fn

    return wrap


def get_estimator(name: str) -> Estimator:
    return ESTIMATORS.get(name)


def estimator_names() -> list[str]:
    return ESTIMATORS.names()


# ---------------------------------------------------------------- group statistics


def _group_index(group_ids, batch: int) -> tuple[torch.Tensor, int]:
    """[B] group ids (a tensor, or any hashable values such as verl's string uids) -> ([B] index in 0..G−1, G)."""
    if isinstance(group_ids, torch.Tensor):
        ids = group_ids.flatten()
        if ids.numel() != batch:
            raise ValueError(f"{ids.numel()} group ids for {batch} rollouts")
        unique, inverse = torch.unique(ids, return_inverse=True)
        return inverse, len(unique)
    values = list(group_ids)
    if len(values) != batch:
        raise ValueError(f"{len(values)} group ids for {batch} rollouts")
    first: dict = {}
    index = [first.setdefault(value, len(first)) for value in values]  # groups numbered by first appearance
    return torch.tensor(index, dtype=torch.long), len(first)


def _check(turn_rewards: torch.Tensor, turn_mask: torch.Tensor) -> torch.Tensor:
    if turn_rewards.dim() != 2 or turn_rewards.shape != turn_mask.shape:
        raise ValueError(f"turn_rewards {tuple(turn_rewards.shape)} and turn_mask {tuple(turn_mask.shape)} "
                         "must both be [B, T]")
    return turn_mask.bool()


def _group_zscore(values, weights, index, num_groups, *, norm_by_std: bool, eps: float) -> torch.Tensor:
    """Per column, normalise each value by the statistics of its group's weighted members.

    Args:
        values: [B, C] float64; weights: [B, C] bool (who counts); index: [B] group index.
    Returns:
        [B, C] (v − mean_g) / (std_g + eps), or v − mean_g without ``norm_by_std``; a group of
        fewer than two members has mean 0 and std 1.
    """
    w = weights.to(values.dtype)  # [B, C]
    shape = (num_groups, values.shape[1])
    count = values.new_zeros(shape).index_add_(0, index, w)  # [G, C] n_g
    mean = values.new_zeros(shape).index_add_(0, index, values * w) / count.clamp(min=1)  # [G, C] Σ v / n_g
    deviation = (values - mean[index]) * w  # [B, C]
    var = values.new_zeros(shape).index_add_(0, index, deviation**2) / (count - 1).clamp(min=1)  # [G, C] unbiased
    single = count <= 1  # [G, C]
    mean = torch.where(single, torch.zeros_like(mean), mean)  # group of one: mean 0 ...
    std = torch.where(single, torch.ones_like(var), var.sqrt())  # ... and std 1
    centred = values - mean[index]  # [B, C] v − mean_g
    return centred / (std[index] + eps) if norm_by_std else centred


def trajectory_scores(turn_rewards: torch.Tensor, turn_mask: torch.Tensor) -> torch.Tensor:
    """[B] float64 S_i = Σ_t R[i,t] over played turns."""
    return (turn_rewards.double() * turn_mask.double()).sum(dim=1)  # [B]


# ---------------------------------------------------------------- turn_grpo


@register_estimator("turn_grpo", level="turn")
def turn_grpo(turn_rewards, turn_mask, group_ids, *, include_finished: bool = True, norm_by_std: bool = True,
              eps: float = 1e-6, step_states=None) -> torch.Tensor:
    """Turn-wise GRPO (ΔBelief-RL): a group z-score per turn index.

    A[i,t] = (R[i,t] − mean_g R[·,t]) / (std_g R[·,t] + eps), g the group of rollout i.
    ``include_finished=True`` (the reference): every rollout of the group counts at every t, a
    rollout that already finished with reward 0. ``False``: only rollouts still playing at t count.

    Args:
        turn_rewards: [B, T]; turn_mask: [B, T] bool; group_ids: [B].
    Returns:
        [B, T] advantages in ``turn_rewards``' dtype, 0 on turns not played.
    """
    mask = _check(turn_rewards, turn_mask)
    index, num_groups = _group_index(group_ids, mask.shape[0])
    rewards = turn_rewards.double() * mask  # [B, T] finished turns count as 0
    weights = torch.ones_like(mask) if include_finished else mask  # [B, T] who enters the statistics
    adv = _group_zscore(rewards, weights, index, num_groups, norm_by_std=norm_by_std, eps=eps)  # [B, T]
    return (adv * mask).to(turn_rewards.dtype)


# ---------------------------------------------------------------- grpo (StarPO) and rloo


@register_estimator("grpo", level="trajectory")
def grpo(turn_rewards, turn_mask, group_ids, *, norm_by_std: bool = True, eps: float = 1e-6,
         step_states=None) -> torch.Tensor:
    """StarPO / GRPO: z-score of S_i = Σ_t R[i,t] within the group, on every played turn.

    Returns:
        [B, T], A[i,t] = (S_i − mean_g S) / (std_g S + eps) where turn t was played, else 0.
    """
    mask = _check(turn_rewards, turn_mask)
    index, num_groups = _group_index(group_ids, mask.shape[0])
    scores = trajectory_scores(turn_rewards, mask)[:, None]  # [B, 1] S_i
    adv = _group_zscore(scores, torch.ones_like(scores, dtype=torch.bool), index, num_groups,
                        norm_by_std=norm_by_std, eps=eps)  # [B, 1]
    return (adv * mask).to(turn_rewards.dtype)  # [B, T] broadcast to played turns


@register_estimator("rloo", level="trajectory")
def rloo(turn_rewards, turn_mask, group_ids, *, step_states=None) -> torch.Tensor:
    """REINFORCE leave-one-out: A_i = S_i − (Σ_{j∈g} S_j − S_i) / (n_g − 1) on every played turn.

    A group of one has baseline 0 (A_i = S_i), as verl's RLOO.
    """
    mask = _check(turn_rewards, turn_mask)
    index, num_groups = _group_index(group_ids, mask.shape[0])
    scores = trajectory_scores(turn_rewards, mask)  # [B] S_i
    total = scores.new_zeros(num_groups).index_add_(0, index, scores)  # [G] Σ_{j∈g} S_j
    count = scores.new_zeros(num_groups).index_add_(0, index, torch.ones_like(scores))  # [G] n_g
    others = (count[index] - 1).clamp(min=1)  # [B] n_g − 1
    baseline = torch.where(count[index] > 1, (total[index] - scores) / others, torch.zeros_like(scores))  # [B]
    return ((scores - baseline)[:, None] * mask).to(turn_rewards.dtype)  # [B, T]


# ---------------------------------------------------------------- gigpo


def discounted_returns(turn_rewards: torch.Tensor, turn_mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """[B, T] float64 G[i,t] = Σ_{k≥t} γ^(k−t) R[i,k] over played turns."""
    rewards = turn_rewards.double() * turn_mask.bool()  # [B, T]
    returns = torch.zeros_like(rewards)  # [B, T]
    running = rewards.new_zeros(rewards.shape[0])  # [B]
    for t in reversed(range(rewards.shape[1])):
        running = rewards[:, t] + gamma * running  # G_t = R_t + γ·G_{t+1}
        returns[:, t] = running
    return returns


def _step_keys(step_states, mask: torch.Tensor, group_ids: list) -> dict[tuple[int, int], Hashable]:
    """(i, t) -> (group id, state) for every played turn; states are grouped within a target's group."""
    if step_states is None:
        raise ValueError("gigpo needs step_states: one hashable state per played turn of every rollout")
    if len(step_states) != mask.shape[0]:
        raise ValueError(f"step_states has {len(step_states)} rows for {mask.shape[0]} rollouts")
    keys = {}
    for i, row in enumerate(step_states):
        played = int(mask[i].sum())
        if len(row) < played:
            raise ValueError(f"rollout {i}: {len(row)} step states for {played} played turns")
        for t in range(played):
            keys[(i, t)] = (group_ids[i], row[t])
    return keys


@register_estimator("gigpo", level="trajectory", needs_step_states=True)
def gigpo(turn_rewards, turn_mask, group_ids, *, norm_by_std: bool = True, eps: float = 1e-6,
          gigpo_gamma: float = 0.95, gigpo_omega: float = 1.0, step_states=None) -> torch.Tensor:
    """GiGPO: episode advantage (``grpo``) + ω·step advantage.

    Args:
        step_states: per rollout, one hashable per played turn: ``step_states[i][t]`` is the state
            in which rollout i made its (t+1)-th move (in knowledge-base games, the frozenset of
            nouns still consistent with the answers so far). Steps of one group with equal states
            form a step group.
    Returns:
        [B, T] A = A_episode + gigpo_omega · A_step, where A_step is the z-score of the discounted
        return G[i,t] (γ = ``gigpo_gamma``) within its step group, 0 for a singleton step group.
    """
    mask = _check(turn_rewards, turn_mask)
    ids = torch.as_tensor(group_ids).flatten().tolist()
    keys = _step_keys(step_states, mask, ids)
    numbering: dict[Hashable, int] = {}
    flat_index = [0] * mask.numel()  # step group of each (i, t), row-major
    for (i, t), key in keys.items():
        flat_index[i * mask.shape[1] + t] = numbering.setdefault(key, len(numbering))
    step_index, num_steps = torch.tensor(flat_index, dtype=torch.long), max(len(numbering), 1)  # [B·T]
    returns = discounted_returns(turn_rewards, mask, gigpo_gamma).reshape(-1, 1)  # [B·T, 1] G[i,t]
    played = mask.reshape(-1, 1)  # [B·T, 1]
    step = _group_zscore(returns, played, step_index, num_steps, norm_by_std=norm_by_std, eps=eps)  # [B·T, 1]
    sizes = returns.new_zeros(num_steps).index_add_(0, step_index, played[:, 0].double())  # step group sizes
    step = torch.where(sizes[step_index][:, None] > 1, step, torch.zeros_like(step))  # singletons get 0
    step = step.reshape(mask.shape)  # [B, T]
    episode = grpo(turn_rewards.double(), mask, group_ids, norm_by_std=norm_by_std, eps=eps)  # [B, T]
    return ((episode + gigpo_omega * step) * mask).to(turn_rewards.dtype)  # A = A_episode + ω·A_step


# ---------------------------------------------------------------- turn_rloo


def returns_to_go(turn_rewards: torch.Tensor, turn_mask: torch.Tensor) -> torch.Tensor:
    """[B, T] float64 G[i,t] = Σ_{k≥t} R[i,k] over played turns (undiscounted)."""
    return discounted_returns(turn_rewards, turn_mask, 1.0)


@register_estimator("turn_rloo", level="trajectory")
def turn_rloo(turn_rewards, turn_mask, group_ids, *, step_states=None) -> torch.Tensor:
    """Reward-to-go minus a leave-one-out baseline per turn index: unbiased under policy-controlled stopping.

    A[i,t] = G[i,t] − b[i,t], G[i,t] = Σ_{k≥t} R[i,k]; b[i,t] is the mean of G[j,t] over the other
    rollouts j of the group that played turn t (0 when none did). Rollout i's own rewards and its own
    stopping turn never enter b[i,t], so E[∇log π(a_t) · b[i,t]] = 0 and the expected update is the
    policy gradient of E[Σ_t R[i,t]]. Takes r_eog once (level ``trajectory``), so G[i,t] is the
    trajectory's return from turn t on. No std normalisation: dividing by a group statistic would
    reweight turns and break that equality.

    Returns:
        [B, T] advantages in ``turn_rewards``' dtype, 0 on turns not played.
    """
    mask = _check(turn_rewards, turn_mask)
    index, num_groups = _group_index(group_ids, mask.shape[0])
    returns = returns_to_go(turn_rewards, mask) * mask  # [B, T] G[i,t], 0 where not played
    shape = (num_groups, mask.shape[1])
    total = returns.new_zeros(shape).index_add_(0, index, returns)  # [G, T] Σ_{j played t} G[j,t]
    count = returns.new_zeros(shape).index_add_(0, index, mask.double())  # [G, T] rollouts that played t
    others = count[index] - 1  # [B, T] other rollouts of the group that played t
    baseline = torch.where(others > 0, (total[index] - returns) / others.clamp(min=1), torch.zeros_like(returns))
    return ((returns - baseline) * mask).to(turn_rewards.dtype)


# ---------------------------------------------------------------- tokens


def turn_runs(response_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where each turn's policy tokens are: one contiguous run of 1s per turn.

    Args:
        response_mask: [B, L], 1 on policy tokens.
    Returns:
        ``(ends, run, num_runs)``: ends [B, L] bool, True on the last token of each run;
        run [B, L] long, the run index k of every token (−1 before the first run);
        num_runs [B] long.
    """
    mask = response_mask.bool()  # [B, L]
    before = torch.cat([mask.new_zeros(mask.shape[0], 1), mask[:, :-1]], dim=1)  # [B, L] shifted right
    after = torch.cat([mask[:, 1:], mask.new_zeros(mask.shape[0], 1)], dim=1)  # [B, L] shifted left
    starts = mask & ~before  # [B, L] first token of a run
    run = starts.long().cumsum(dim=1) - 1  # [B, L] k-th run
    return mask & ~after, run, starts.sum(dim=1)


def to_token_level(turn_adv: torch.Tensor, response_mask: torch.Tensor,
                   turn_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Spread per-turn advantages over the policy's tokens.

    Args:
        turn_adv: [B, T]; response_mask: [B, L], 1 on policy-sampled tokens (one contiguous run
            per move, as :meth:`Trajectory.response_mask`); turn_mask: optional [B, T], when given
            each row must have exactly as many runs as played turns.
    Returns:
        [B, L]: the k-th run of 1s in row i gets turn_adv[i, k]; 0 elsewhere.
    """
    mask = response_mask.bool()  # [B, L]
    _, run, num_runs = turn_runs(mask)  # [B, L] run number k of each token, [B] runs per row
    limit = turn_mask.bool().sum(dim=1) if turn_mask is not None else torch.full_like(num_runs, turn_adv.shape[1])
    bad = (num_runs != limit) if turn_mask is not None else (num_runs > limit)  # [B]
    if bad.any():
        row = int(bad.nonzero()[0])
        raise ValueError(f"row {row}: response_mask has {int(num_runs[row])} runs of policy tokens "
                         f"but {int(limit[row])} turns")
    if turn_adv.shape[1] == 0:
        return torch.zeros(mask.shape, dtype=turn_adv.dtype, device=turn_adv.device)
    values = turn_adv.gather(1, run.clamp(min=0))  # [B, L] turn_adv[i, k(l)]
    return values * mask.to(turn_adv.dtype)
