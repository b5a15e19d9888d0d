"""Batched multi-turn rollouts: many games played in lock-step, recorded token-exactly.

Each round samples one move for every game still running (in forward batches of
``batch_size``), plays all of them through :func:`~deltabelief.games.base.play_moves`
(one judge batch per round) and appends the observation tokens. A finished game
takes no more samples. The layout of :class:`~deltabelief.trajectory.Trajectory`
is ``prompt | move_1 | obs_1 | ... | move_N | obs_N``: the last observation (end of
turn, the final answer, the next assistant header) is appended too, so h_N can be
scored like every other h_t.

Games are ordered target-major: game ``g * n_per_target + i`` is sample ``i`` of
target ``g``; ``group_id = g``. Every game draws from its own ``torch.Generator``
seeded from ``(seed, game index)``: the same seed gives identical trajectories, and
a game's random stream does not depend on the batch size or on which other games
are still running (results across batch sizes or cache settings then agree up to
rare float-rounding flips, see :func:`~deltabelief.policy.sampling.inverse_cdf`).
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from deltabelief.games.base import Game, GameState, StepResult, play_moves
from deltabelief.policy.chat import observation_ids, prompt_ids
from deltabelief.policy.policy import Policy
from deltabelief.policy.sampling import PrefixCache, Sample
from deltabelief.trajectory import PolicyTurn, Trajectory
from deltabelief.types import Judge, Target

log = logging.getLogger(__name__)


@dataclass
class RolloutStats:
    """Counts and timings of one :func:`rollout_with_stats` call (for ``perf/`` and ``rollout/`` metrics)."""

    num_games: int
    num_rounds: int
    """Lock-step rounds played (= the longest game's turns)."""
    num_policy_turns: int
    """Moves sampled, summed over games."""
    policy_tokens: int
    """Tokens the policy sampled (after the cut; eos not counted)."""
    conversation_tokens: int
    """Tokens of all trajectories (prompts, moves, observations)."""
    prefill_tokens: int
    """Tokens the policy must run that it did not sample: each distinct prompt once and every
    observation but the last one of a game (the roofline's prefill work; benchmarks/roofline.py)."""
    sample_seconds: float
    """Wall time inside policy sampling."""
    judge_seconds: float
    """Wall time inside ``play_moves`` (rules + judge)."""
    total_seconds: float

    @property
    def tokens_per_second(self) -> float:
        """Policy tokens per second of sampling time."""
        return self.policy_tokens / self.sample_seconds if self.sample_seconds > 0 else 0.0

    def metrics(self) -> dict[str, float]:
        return {
            "perf/rollout_seconds": self.total_seconds,
            "perf/rollout_sample_seconds": self.sample_seconds,
            "perf/rollout_judge_seconds": self.judge_seconds,
            "perf/rollout_tokens_per_s": self.tokens_per_second,
            "rollout/policy_tokens": float(self.policy_tokens),
            "rollout/num_policy_turns": float(self.num_policy_turns),
            "rollout/conversation_tokens": float(self.conversation_tokens),
            "rollout/prefill_tokens": float(self.prefill_tokens),
        }


@dataclass
class _Game:
    """One game in flight: its state and the token record built so far."""

    trajectory: Trajectory
    state: GameState
    generator: torch.Generator
    cache: PrefixCache | None = None
    """KV of the conversation's first tokens, from the last round (``policy.config.keep_kv_cache``)."""


def _with_max_turns(game: Game, max_turns: int | None) -> Game:
    """A shallow copy of ``game`` allowing ``max_turns`` questions (prompts mention the new budget)."""
    if max_turns is None or max_turns == game.max_turns:
        return game
    if max_turns < 1:
        raise ValueError(f"max_turns must be at least 1, got {max_turns}")
    game = copy.copy(game)
    game.max_turns = max_turns
    return game


def game_generator(seed: int, index: int) -> torch.Generator:
    """The random stream of game ``index`` in a rollout seeded with ``seed``."""
    state = np.random.SeedSequence([seed, index]).generate_state(1)[0]
    return torch.Generator(device="cpu").manual_seed(int(state))


def _start_games(
    policy: Policy, game: Game, targets: list[Target], n_per_target: int, seed: int
) -> list[_Game]:
    games = []
    for group_id, target in enumerate(targets):
        messages = game.opening_messages(target)
        ids = prompt_ids(policy.tokenizer, messages)
        for sample_index in range(n_per_target):
            trajectory = Trajectory(
                target=target, group_id=group_id, sample_index=sample_index, input_ids=list(ids),
                prompt_length=len(ids), messages=[dict(m) for m in messages],
            )
            state = game.new_state(target)
            state.max_turns = game.max_turns
            games.append(_Game(trajectory, state, game_generator(seed, len(games))))
    return games


def _record_turn(policy: Policy, running: _Game, sample: Sample, result: StepResult) -> None:
    """Append a sampled move and its observation to the game's token record."""
    trajectory = running.trajectory
    start = len(trajectory.input_ids)
    trajectory.input_ids.extend(sample.token_ids)
    span = (start, len(trajectory.input_ids))
    trajectory.input_ids.extend(observation_ids(policy.tokenizer, result.text))
    trajectory.turns.append(
        PolicyTurn(
            token_ids=list(sample.token_ids), span=span, logprobs=list(sample.logprobs), move=sample.text,
            answer=result.text, status=result.status, end_of_turn=len(trajectory.input_ids),
        )
    )
    trajectory.messages.append({"role": "assistant", "content": sample.text})
    trajectory.messages.append({"role": "user", "content": result.text})


def prefill_tokens(trajectories: list[Trajectory]) -> int:
    """Each distinct prompt once, plus every game's tokens from its prompt to its last move's end
    (sampled tokens included: the caller subtracts them)."""
    prompts = {tuple(t.input_ids[: t.prompt_length]) for t in trajectories}
    ends = sum((t.turns[-1].span[1] if t.turns else t.prompt_length) - t.prompt_length for t in trajectories)
    return sum(map(len, prompts)) + ends


def rollout_with_stats(
    policy: Policy, game: Game, judge: Judge, targets: list[Target], n_per_target: int,
    max_turns: int | None = None, seed: int = 0, *, eval_mode: bool = False,
    batch_size: int | None = None, progress: bool = True,
) -> tuple[list[Trajectory], RolloutStats]:
    """Play ``n_per_target`` games per target in lock-step; return trajectories and :class:`RolloutStats`.

    ``max_turns`` overrides the game's budget; ``eval_mode`` uses the eval sampling settings;
    ``batch_size`` overrides ``policy.config.batch_size`` for the forward batches. With
    ``policy.config.keep_kv_cache`` each game's KV cache is kept between rounds, so a round
    only runs the tokens added since (the end of the last move and the observation); with
    ``policy.config.sampler: fast`` all of them live in one session (fast_sampling.py).
    """
    if n_per_target < 1:
        raise ValueError(f"n_per_target must be at least 1, got {n_per_target}")
    began = time.perf_counter()
    game = _with_max_turns(game, max_turns)
    games = _start_games(policy, game, targets, n_per_target, seed)
    sample_seconds = judge_seconds = 0.0
    rounds, keep_cache = 0, policy.config.keep_kv_cache
    session = policy.decode_session(eval_mode=eval_mode, batch_size=batch_size)
    bar = tqdm(total=game.max_turns, desc="rollout", unit="round", disable=not progress)
    while running := [g for g in games if not g.state.done]:
        tick = time.perf_counter()
        if session is not None:
            samples = session.sample([id(g) for g in running], [g.trajectory.input_ids for g in running],
                                     [g.generator for g in running])
        else:
            samples = policy.sample(
                [g.trajectory.input_ids for g in running], generator=[g.generator for g in running],
                eval_mode=eval_mode, batch_size=batch_size, keep_cache=keep_cache,
                prefixes=[g.cache for g in running] if keep_cache else None,
            )
        tock = time.perf_counter()
        results = play_moves(game, judge, [g.state for g in running], [s.text for s in samples])
        judge_seconds += time.perf_counter() - tock
        sample_seconds += tock - tick
        for g, sample, result in zip(running, samples, results):
            _record_turn(policy, g, sample, result)
            g.cache = None if g.state.done else sample.cache  # free finished games' memory
        rounds += 1
        bar.update(1)
        bar.set_postfix(running=sum(not g.state.done for g in games))
    bar.close()
    trajectories = []
    for g in games:
        g.trajectory.solved = g.state.solved
        trajectories.append(g.trajectory)
    policy_tokens = sum(len(turn.token_ids) for t in trajectories for turn in t.turns)
    stats = RolloutStats(
        num_games=len(games), num_rounds=rounds, num_policy_turns=sum(t.num_turns for t in trajectories),
        policy_tokens=policy_tokens, conversation_tokens=sum(len(t.input_ids) for t in trajectories),
        prefill_tokens=prefill_tokens(trajectories) - policy_tokens,
        sample_seconds=sample_seconds, judge_seconds=judge_seconds, total_seconds=time.perf_counter() - began,
    )
    log.info(
        "rollout: %d games, %d rounds, %d tokens in %.1fs (%.1f tok/s sampling)", stats.num_games,
        stats.num_rounds, stats.policy_tokens, stats.total_seconds, stats.tokens_per_second,
    )
    return trajectories, stats


def rollout(
    policy: Policy, game: Game, judge: Judge, targets: list[Target], n_per_target: int,
    max_turns: int | None = None, seed: int = 0, *, eval_mode: bool = False,
    batch_size: int | None = None, progress: bool = True,
) -> list[Trajectory]:
    """Trajectories only; see :func:`rollout_with_stats` (which also returns timings)."""
    trajectories, _ = rollout_with_stats(
        policy, game, judge, targets, n_per_target, max_turns, seed,
        eval_mode=eval_mode, batch_size=batch_size, progress=progress,
    )
    return trajectories
