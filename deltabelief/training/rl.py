"""The single-machine RL trainer: rollout -> beliefs -> rewards -> advantages -> PPO-clip updates.

Shapes: ``B`` rollouts in a step (targets x G), ``T`` turns (the most of any rollout),
``L`` padded tokens.

Lifecycle (composition, no base class): ``setup`` loads the policy, optimizer,
scheduler, game and judge (and a checkpoint with ``resume``), ``train`` runs the
steps, ``save_checkpoint`` writes one, ``cleanup`` releases what ``setup`` made.

One step ``s`` (1-based):

1. the step's targets: a seeded permutation per epoch, a function of (seed, s) only,
   so a resumed run draws the same targets (:func:`targets_for_step`);
2. rollouts: G games per target, sampled with a generator seeded from (seed, s);
3. log b_t for every turn (current policy, T = 1), ΔBelief, per-turn rewards with r_eog placed
   by the estimator's ``level``, and advantages from the estimator registry;
4. log π_old: by default (``ppo.old_logprobs: recompute``) the sampled tokens are scored
   once by the rollout policy in eval mode, with no grad, at the sampling temperature and
   with the same code that scores log π_θ. The ratio then starts at exactly 1 and measures
   only what the update changed, not sampler-vs-trainer numerics (KV-cached left-padded
   decoding vs. one right-padded forward) nor top-k/top-p warping. ``sampling`` uses the
   log-probs recorded while sampling instead (refused with top-k/top-p, whose recorded
   log-probs are of the warped distribution). The gap between the two is logged as
   ``loss/old_logprob_gap`` either way. With ``train.packing: prefix_tree`` (the default)
   steps 3 and 4 read one no-grad forward over prefix trees, in which rollouts share the
   prompt's tokens (:func:`~deltabelief.training.step_scoring.score_step`); its time is
   ``perf/seconds_belief``. With ``pad`` they are two right-padded passes
   (:func:`deltabelief.belief.score_beliefs`, then :func:`token_logprobs`);
5. ``ppo.ppo_epochs`` passes over the rollouts in shuffled mini-batches of
   ``ppo.mini_batch_size`` rollouts, one optimizer step each, with gradient accumulation
   over micro-batches of ``ppo.micro_batch_size`` (each one prefix-tree forward, or a padded
   batch with ``train.packing: pad``); the loss of a mini-batch is the token mean over all its
   policy tokens (:func:`~deltabelief.training.ppo_loss.ppo_clip_loss`);
   grad-norm clip, AdamW; the LR scheduler steps once per RL step.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from deltabelief.advantages import get_estimator
from deltabelief.belief import BeliefScores, delta_beliefs, eval_mode, score_beliefs
from deltabelief.config import Config, ConfigError, config_to_dict
from deltabelief.information import exact_knowledge_base
from deltabelief.policy.chat import pad_id
from deltabelief.rewards import step_rewards
from deltabelief.threads import ThreadFitter
from deltabelief.training import metrics as M
from deltabelief.training.checkpoints import (
    TrainerState, capture_rng, load_latest_checkpoint, restore_rng, save_checkpoint,
)
from deltabelief.training.logprobs import pad_rows, right_pad, token_logprobs
from deltabelief.training.optim import build_optimizer, build_scheduler
from deltabelief.training.ppo_loss import PPOStats, ppo_clip_loss
from deltabelief.training.prefix_tree import sequence_logprobs
from deltabelief.training.run_dir import check_checkpoint_identity, claim_run_dir, run_identity
from deltabelief.training.step_scoring import score_step
from deltabelief.trajectory import Trajectory, transcript
from deltabelief.types import Target

log = logging.getLogger(__name__)

LogFn = Callable[[dict[str, float], int], None]


@dataclass
class TrainResult:
    output_dir: Path
    model_dir: Path | None
    """The final policy (merged weights + tokenizer), loadable as ``policy.model``."""
    num_steps: int
    """Steps completed, counting those done before a resume."""
    history: list[dict[str, float]] = field(default_factory=list)
    """Metrics of the steps run in this call, in order."""
    last_checkpoint: Path | None = None


# ---------------------------------------------------------------- pure helpers


def derive_seed(seed: int, step: int, stage: int = 0) -> int:
    """A stable 63-bit seed for (run seed, step, stage)."""
    digest = hashlib.sha256(f"{seed}/{step}/{stage}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def targets_fingerprint(targets: Sequence[Target]) -> str:
    return hashlib.sha256("\n".join(t.id for t in targets).encode()).hexdigest()[:16]


def targets_for_step(targets: Sequence[Target], step: int, count: int, seed: int) -> list[Target]:
    """The ``count`` targets of step ``step`` (1-based): consecutive slices of per-epoch permutations.

    Epoch e is ``randperm(len(targets))`` seeded from (seed, e); slices wrap into the next epoch.
    """
    if not targets:
        raise ValueError("no targets to train on")
    n = len(targets)
    chosen = []
    for position in range((step - 1) * count, step * count):
        epoch, offset = divmod(position, n)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(derive_seed(seed, epoch, 1)))
        chosen.append(targets[int(order[offset])])
    return chosen


def turn_mask_of(trajectories: Sequence[Trajectory]) -> torch.Tensor:
    """[B, T] bool: True on turns 1..N_i of each rollout."""
    width = max((t.num_turns for t in trajectories), default=0)
    counts = torch.tensor([t.num_turns for t in trajectories])  # [B]
    return torch.arange(width)[None, :] < counts[:, None]  # [B, T]


def token_advantages(trajectories: Sequence[Trajectory], turn_adv: torch.Tensor) -> list[list[float]]:
    """Per-token advantages (ragged [L_i]): every token of move t gets turn_adv[i, t]; others 0.

    Uses each turn's recorded span, so a move with no tokens simply has none to credit.
    """
    rows = []
    for i, traj in enumerate(trajectories):
        row = [0.0] * len(traj.input_ids)
        for t, turn in enumerate(traj.turns):
            start, end = turn.span
            row[start:end] = [float(turn_adv[i, t])] * (end - start)
        rows.append(row)
    return rows


def sampling_logprobs(traj: Trajectory) -> list[float]:
    """Ragged [L_i] recorded sampling log-probs at their positions (0 off the policy tokens)."""
    row = [0.0] * len(traj.input_ids)
    for t, turn in enumerate(traj.turns):
        start, end = turn.span
        if traj.input_ids[start:end] != list(turn.token_ids) or len(turn.logprobs) != end - start:
            raise ValueError(f"trajectory {traj.target.id!r}/{traj.sample_index}, turn {t + 1}: span {turn.span} "
                             "does not hold the sampled token ids and their log-probs")
        row[start:end] = list(turn.logprobs)
    return row


@dataclass
class Batch:
    """One step's training data, ragged per rollout (padded per micro-batch)."""

    input_ids: list[list[int]]
    response_mask: list[list[int]]
    advantages: list[list[float]]
    old_logprobs: list[list[float]]

    def __len__(self) -> int:
        return len(self.input_ids)

    def tensors(self, rows: Sequence[int], pad_id: int) -> dict[str, torch.Tensor]:
        """Right-padded [B', L] tensors of ``rows``."""
        ids, attention = right_pad([self.input_ids[i] for i in rows], pad_id)  # [B', L]
        length = ids.shape[1]
        return {
            "input_ids": ids, "attention_mask": attention,
            "response_mask": pad_rows([self.response_mask[i] for i in rows], length),
            "advantages": pad_rows([self.advantages[i] for i in rows], length),
            "old_logprobs": pad_rows([self.old_logprobs[i] for i in rows], length),
        }


# ---------------------------------------------------------------- the trainer


class RLTrainer:
    """See the module docstring. ``log_fn(metrics, step)`` receives every step's metrics."""

    def __init__(self, config: Config, targets: Sequence[Target], out_dir: str | Path, *,
                 log_fn: LogFn | None = None, progress: bool = True):
        self.config = config
        self.targets = list(targets)
        self.out_dir = Path(out_dir)
        self.log_fn = log_fn
        self.progress = progress
        self.threads = ThreadFitter(config.policy.num_threads, adapt=config.policy.adapt_threads)
        self.start_step = 0
        self.history: list[dict[str, float]] = []
        self.last_checkpoint: Path | None = None

    # ------------------------------------------------------------ setup / cleanup

    def _check_config(self) -> None:
        c = self.config
        if c.train.backend != "torch":
            raise ConfigError(f"train.backend={c.train.backend!r}: this trainer is the 'torch' backend; "
                              "the 'verl' backend runs through deltabelief.integrations.verl")
        if c.policy.temperature <= 0:
            raise ConfigError("policy.temperature must be > 0 for RL (the ratio needs a sampling distribution)")
        if c.ppo.old_logprobs == "sampling" and (c.policy.top_p < 1 or c.policy.top_k > 0):
            raise ConfigError("ppo.old_logprobs='sampling' needs policy.top_p=1 and policy.top_k=0: the recorded "
                              "log-probs of top-k/top-p sampling are of the warped distribution")
        for name in ("mini_batch_size", "micro_batch_size", "ppo_epochs"):
            if getattr(c.ppo, name) < 1:
                raise ConfigError(f"ppo.{name} must be at least 1")

    def setup(self, resume: bool = False) -> None:
        from deltabelief.policy.policy import Policy
        from deltabelief.games.base import build_game
        from deltabelief.session import build_judge

        self._check_config()
        c = self.config
        random.seed(c.train.seed)
        np.random.seed(c.train.seed % 2**32)
        torch.manual_seed(c.train.seed)
        self.policy = Policy.from_config(c.policy, seed=c.train.seed)
        self.game = build_game(c.game)
        self.judge = build_judge(c.judge, c.game)
        self.estimator = get_estimator(c.estimator.name)
        self.params = [p for p in self.policy.model.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(self.params, c.optim)
        self.scheduler = build_scheduler(self.optimizer, c.optim.warmup_steps)
        self.identity = run_identity(c, targets_fingerprint(self.targets), len(self.targets))
        claim_run_dir(self.out_dir, self.identity, resume)  # refuses a directory holding another run
        (self.out_dir / "config.json").write_text(json.dumps(config_to_dict(c), indent=1))
        if resume:
            self._resume()
        else:
            self._truncate_metrics(0)  # a fresh run starts its own metrics file

    def _data_order(self) -> dict:
        c = self.config.train
        return {"seed": c.seed, "num_targets": len(self.targets), "targets": targets_fingerprint(self.targets),
                "targets_per_step": c.targets_per_step}

    def _resume(self) -> None:
        found = load_latest_checkpoint(self.out_dir / "checkpoints", model=self.policy.model,
                                       optimizer=self.optimizer, scheduler=self.scheduler)
        if found is None:
            log.warning("--resume: no checkpoint under %s; starting from step 1", self.out_dir / "checkpoints")
            return
        path, state = found
        check_checkpoint_identity(path, state.extra.get("run"), self.identity)
        if state.data_order != self._data_order():
            raise ValueError(f"{path}: the checkpoint's data order {state.data_order} differs from this run's "
                             f"{self._data_order()} (different targets, seed or targets_per_step)")
        restore_rng(state.rng)
        self.start_step = state.step
        self.last_checkpoint = path
        self._truncate_metrics(state.step, state.extra.get("metrics"))
        log.info("resumed from %s at step %d", path, state.step)

    def cleanup(self) -> None:
        """Drop the model, optimizer and judge so their memory can be reclaimed."""
        for name in ("optimizer", "scheduler", "judge", "game", "policy", "params"):
            self.__dict__.pop(name, None)

    # ------------------------------------------------------------ the loop

    def train(self) -> TrainResult:
        c = self.config.train
        bar = tqdm(range(self.start_step + 1, c.num_steps + 1), desc="rl", unit="step", disable=not self.progress)
        for step in bar:
            metrics = self.train_step(step)
            if step % c.checkpoint_every == 0 or step == c.num_steps:
                tick = time.perf_counter()
                self.save_checkpoint(step, metrics)
                metrics["perf/seconds_checkpoint"] = time.perf_counter() - tick
            self._record(step, metrics)
            bar.set_postfix(success=f"{metrics['rollout/success_rate']:.2f}",
                            reward=f"{metrics['reward/rollout_sum_mean']:.2f}")
        model_dir = self.policy.save(self.out_dir / "model")
        return TrainResult(self.out_dir, model_dir, max(c.num_steps, self.start_step), self.history,
                           self.last_checkpoint)

    def train_step(self, step: int) -> dict[str, float]:
        """One RL step; returns its metrics."""
        from deltabelief.rollout import rollout_with_stats

        c = self.config
        seconds: dict[str, float] = {}
        threads = self.threads.fit()
        began = tick = time.perf_counter()
        targets = targets_for_step(self.targets, step, c.train.targets_per_step, c.train.seed)
        trajectories, rollout_stats = rollout_with_stats(
            self.policy, self.game, self.judge, targets, c.train.rollouts_per_target,
            seed=derive_seed(c.train.seed, step, 2), progress=False)
        seconds["rollout"], tick = time.perf_counter() - tick, time.perf_counter()
        scores, recomputed = self.score_rollouts(trajectories)
        seconds["belief"] = time.perf_counter() - tick
        turn_adv, score_metrics = self.beliefs_to_advantages(trajectories, scores, seconds)
        tick = time.perf_counter()
        batch = self.make_batch(trajectories, turn_adv)
        old_gap = self.prepare_old_logprobs(batch, recomputed)
        seconds["old_logprobs"], tick = time.perf_counter() - tick, time.perf_counter()
        stats, grad_norms = self.update(batch, step)
        seconds["update"] = time.perf_counter() - tick
        seconds["step"] = time.perf_counter() - began
        self._write_samples(step, trajectories)
        trained = sum(sum(m) for m in batch.response_mask) * c.ppo.ppo_epochs
        kb = exact_knowledge_base(self.judge, self.game.name)
        info = M.information_metrics(trajectories, kb) if kb is not None else {}
        return {
            **M.rollout_metrics(trajectories), **score_metrics, **rollout_stats.metrics(), **info,
            **M.loss_metrics(stats, grad_norms, self.scheduler.get_last_lr()[0], *(old_gap or (None, None))),
            **M.perf_metrics(seconds, rollout_stats.policy_tokens, trained), "perf/threads": float(threads),
        }

    def score_rollouts(self, trajectories: list[Trajectory]) -> tuple[BeliefScores, list[list[float]] | None]:
        """log b_t of every rollout, and with ``train.packing: prefix_tree`` and ``ppo.old_logprobs:
        recompute`` also log π_old of the sampled tokens, read from the same forward (else None)."""
        c = self.config
        if c.train.packing == "pad":
            return score_beliefs(self.policy.model, self.policy.tokenizer, trajectories, c.belief.template,
                                 on_unlocatable=c.belief.on_unlocatable, batch_size=c.belief.batch_size), None
        return score_step(self.policy.model, self.policy.tokenizer, trajectories, c.belief.template,
                          on_unlocatable=c.belief.on_unlocatable, old_logprobs=c.ppo.old_logprobs == "recompute",
                          temperature=c.policy.temperature, max_tokens=c.train.max_row_tokens)

    def beliefs_to_advantages(self, trajectories: list[Trajectory], scores: BeliefScores,
              seconds: dict[str, float] | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """Beliefs -> ΔBelief -> rewards -> advantages. Returns ([B, T] turn advantages, metrics);
        the time it takes goes to ``seconds["reward_adv"]``."""
        c = self.config
        seconds = {} if seconds is None else seconds
        tick = time.perf_counter()
        deltas = delta_beliefs(scores.log_beliefs, scores.mask)  # [B, T]
        mask = turn_mask_of(trajectories)  # [B, T]
        rewards = step_rewards(deltas.delta, [t.statuses() for t in trajectories], mask, [t.solved for t in trajectories],
                               reward=c.reward, unanswerable_as_invalid=c.judge.unanswerable_as_invalid,
                               estimator_level=self.estimator.level).total()  # [B, T]
        options = {name: getattr(c.estimator, name) for name in self.estimator.options}
        states = self.step_states(trajectories) if self.estimator.needs_step_states else None
        group_ids = torch.tensor([t.group_id for t in trajectories])  # [B]
        turn_adv = self.estimator(rewards, mask, group_ids, step_states=states, **options)  # [B, T]
        metrics = {
            **M.reward_metrics(rewards, mask), **M.advantage_metrics(turn_adv, mask),
            **M.belief_metrics(scores.log_beliefs, scores.mask, deltas.delta, deltas.turn_mask,
                               deltas.num_nonfinite, len(scores.excluded)),
        }
        seconds["reward_adv"] = time.perf_counter() - tick
        return turn_adv, metrics

    def step_states(self, trajectories: list[Trajectory]) -> list[list]:
        """The state before every move: the knowledge base's still-consistent nouns when the judge
        has them, else the game's own state of each move (:meth:`Game.step_states`)."""
        kb = getattr(self.judge, "kb", None)
        if kb is None or not hasattr(kb, "consistent"):
            return [self.game.step_states([(x.move, x.status) for x in traj.turns]) for traj in trajectories]
        return [[frozenset(kb.consistent([(x.move, x.status) for x in traj.turns[:t]])) for t in range(traj.num_turns)]
                for traj in trajectories]

    def make_batch(self, trajectories: list[Trajectory], turn_adv: torch.Tensor) -> Batch:
        return Batch(
            input_ids=[list(t.input_ids) for t in trajectories],
            response_mask=[t.response_mask() for t in trajectories],
            advantages=token_advantages(trajectories, turn_adv),
            old_logprobs=[sampling_logprobs(t) for t in trajectories],
        )

    def _logprobs(self, batch: Batch, rows: list[int], tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        """[B', L] log π_θ of the policy tokens of ``rows`` at the sampling temperature."""
        temperature = self.config.policy.temperature
        if self.config.train.packing == "prefix_tree":
            return sequence_logprobs(self.policy.model, [batch.input_ids[i] for i in rows],
                                     [batch.response_mask[i] for i in rows], self._pad_id,
                                     max_tokens=self.config.train.max_row_tokens, temperature=temperature)
        return token_logprobs(self.policy.model, tensors["input_ids"], tensors["attention_mask"],
                              tensors["response_mask"], temperature=temperature)

    def prepare_old_logprobs(self, batch: Batch, recomputed: list[list[float]] | None = None,
                             ) -> tuple[float, float] | None:
        """With ``ppo.old_logprobs: recompute``, replace ``batch.old_logprobs`` by the rollout policy's
        scores of the sampled tokens (``recomputed`` when the belief forward already read them) and
        return the mean and max |recorded − recomputed| (None otherwise)."""
        if self.config.ppo.old_logprobs == "sampling":
            return None
        if recomputed is None:
            recomputed = self._recompute_old_logprobs(batch)
        gaps = [abs(a - b) for rec, old, m in zip(recomputed, batch.old_logprobs, batch.response_mask)
                for a, b, keep in zip(rec, old, m) if keep]
        batch.old_logprobs = recomputed
        return (float(np.mean(gaps)), float(np.max(gaps))) if gaps else (0.0, 0.0)

    def _recompute_old_logprobs(self, batch: Batch) -> list[list[float]]:
        model, size = self.policy.model, self.config.ppo.micro_batch_size
        recomputed: list[list[float]] = []
        with eval_mode(model):
            for first in range(0, len(batch), size):
                rows = list(range(first, min(first + size, len(batch))))
                values = self._logprobs(batch, rows, batch.tensors(rows, self._pad_id)).cpu()  # [B', L]
                recomputed += [values[j, : len(batch.input_ids[i])].tolist() for j, i in enumerate(rows)]
        return recomputed

    @property
    def _pad_id(self) -> int:
        return pad_id(self.policy.tokenizer)

    def update(self, batch: Batch, step: int) -> tuple[list[PPOStats], list[float]]:
        """PPO epochs x mini-batches, one optimizer step per mini-batch; the scheduler steps once."""
        p = self.config.ppo
        stats: list[PPOStats] = []
        grad_norms: list[float] = []
        self.policy.model.train()
        for epoch in range(p.ppo_epochs):
            generator = torch.Generator().manual_seed(derive_seed(self.config.train.seed, step, 3 + epoch))
            order = torch.randperm(len(batch), generator=generator).tolist()
            for first in range(0, len(order), p.mini_batch_size):
                mini = order[first : first + p.mini_batch_size]
                stats += self._minibatch_step(batch, mini, grad_norms)
        self.scheduler.step()
        self.policy.model.eval()
        return stats, grad_norms

    def _minibatch_step(self, batch: Batch, rows: list[int], grad_norms: list[float]) -> list[PPOStats]:
        p = self.config.ppo
        total = sum(sum(batch.response_mask[i]) for i in rows)  # token-mean denominator of the mini-batch
        if total == 0:
            return []
        self.optimizer.zero_grad(set_to_none=True)
        stats = []
        for first in range(0, len(rows), p.micro_batch_size):
            micro = rows[first : first + p.micro_batch_size]
            t = batch.tensors(micro, self._pad_id)
            loss, s = ppo_clip_loss(self._logprobs(batch, micro, t), t["old_logprobs"], t["advantages"], t["response_mask"],
                                    clip_low=p.clip_low, clip_high=p.clip_high, dual_clip=p.dual_clip,
                                    num_tokens=total)
            loss.backward()
            stats.append(s)
        grad_norms.append(float(torch.nn.utils.clip_grad_norm_(self.params, self.config.optim.grad_clip)))
        self.optimizer.step()
        return stats

    # ------------------------------------------------------------ checkpoints and records

    def save_checkpoint(self, step: int, metrics: dict[str, float] | None = None) -> Path:
        """The step's metrics travel with its checkpoint: a stop between the checkpoint and the
        metrics line is then repaired on resume instead of losing the step's row."""
        extra = {"run": self.identity, "metrics": {k: float(v) for k, v in (metrics or {}).items()}}
        state = TrainerState(step=step, data_order=self._data_order(), rng=capture_rng(), extra=extra)
        self.last_checkpoint = save_checkpoint(
            self.out_dir / "checkpoints", state, model=self.policy.model, tokenizer=self.policy.tokenizer,
            optimizer=self.optimizer, scheduler=self.scheduler, keep_last=self.config.train.keep_checkpoints)
        return self.last_checkpoint

    def _record(self, step: int, metrics: dict[str, float]) -> None:
        metrics = {k: float(v) for k, v in metrics.items()}
        self.history.append(metrics)
        with open(self.out_dir / "metrics.jsonl", "a") as handle:
            handle.write(json.dumps({"step": step, **metrics}) + "\n")
        if self.log_fn is not None:
            self.log_fn(metrics, step)

    def _truncate_metrics(self, step: int, checkpoint_row: dict[str, float] | None = None) -> None:
        """Keep the rows of steps up to ``step``; ``checkpoint_row`` (the copy of step's row that its
        checkpoint carries) stands in for that row when the file lost it."""
        path = self.out_dir / "metrics.jsonl"
        lines = path.read_text().splitlines() if path.exists() else []
        rows = [(json.loads(line)["step"], line) for line in lines if line]  # each line parsed once
        kept = [line for row_step, line in rows if row_step <= step]
        if checkpoint_row and step not in {row_step for row_step, _ in rows}:
            kept.append(json.dumps({"step": step, **checkpoint_row}))
        if path.exists() or kept:
            path.write_text("".join(line + "\n" for line in kept))

    def _write_samples(self, step: int, trajectories: list[Trajectory]) -> None:
        count = self.config.train.num_logged_samples
        if count <= 0:
            return
        folder = self.out_dir / "samples"
        folder.mkdir(exist_ok=True)
        with open(folder / f"step_{step:06d}.jsonl", "w") as handle:
            for traj in trajectories[:count]:
                handle.write(json.dumps(transcript(traj)) + "\n")


def run_rl(config: Config, targets: Sequence[Target] | str | Path, out_dir: str | Path, *, resume: bool = False,
           log_fn: LogFn | None = None, progress: bool = True) -> TrainResult:
    """Train ``config.policy`` with RL on ``targets`` (a list, or targets.parquet whose train split is used)."""
    if isinstance(targets, (str, Path)):
        from deltabelief.data.targets import read_targets

        targets = read_targets(targets, split="train")
    trainer = RLTrainer(config, targets, out_dir, log_fn=log_fn, progress=progress)
    trainer.setup(resume=resume)
    try:
        return trainer.train()
    finally:
        trainer.cleanup()
