"""Launch ΔBelief-RL on verl: dataset files, the trainer hook, the Ray task runner, :func:`run_verl`.

The trainer is verl's DataProto PPO trainer (``RayPPOTrainer``, ``trainer.use_v1=false``) with one
hook, :meth:`DeltaBeliefTrainer._compute_old_log_prob`. verl calls it once per step, on the driver,
after the rollouts and before the advantages. Before computing the old log-probs as usual it

1. scores log b_0..log b_N of every rollout with the actor (the current policy at temperature 1):
   ``cluster.belief_layout=packed`` sends one packed row per rollout to the actor workers'
   ``compute_packed_beliefs`` (:mod:`.packed_belief`, :mod:`.belief_worker`); ``per_prefix`` sends
   one elicitation row per (rollout, turn) to their ``compute_log_prob`` (:mod:`.belief`);
2. turns beliefs, statuses and outcomes into per-turn rewards at each turn's last token
   (:class:`.reward_manager.DeltaBeliefRewardManager`);
3. writes them into ``batch.batch["rm_scores"]`` in place. verl's ``fit`` has already taken that
   tensor as the step's reward (``extract_reward`` returns the stored tensor itself, a contract
   the tests check), so the advantage estimator (:mod:`.estimator`) sees the per-turn rewards.

verl's ``TaskRunner`` is a Ray actor class, which Ray does not allow subclassing; the runner here
subclasses its plain base (``BaseTaskRunner``) and mirrors ``TaskRunner.run`` with our trainer, and
puts our actor worker (verl's plus ``compute_packed_beliefs``) in verl's place.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import Any, Sequence

import ray
import torch
from omegaconf import DictConfig, OmegaConf
from verl.protocol import DataProto, pad_dataproto_to_divisor
from verl.trainer.main_ppo import run_ppo
from verl.trainer.main_ppo_v0 import BaseTaskRunner
from verl.trainer.ppo.ray_trainer import RayPPOTrainer
from verl.utils import tensordict_utils as tu
from verl.workers.utils.padding import left_right_2_no_padding, no_padding_2_padding

from deltabelief.config import Config
from deltabelief.games.base import build_game
from deltabelief.integrations.verl import agent_loop as _agent_loop  # noqa: F401  (registers the loop)
from deltabelief.integrations.verl.belief import TURN_ENDS_KEY, score_batch_beliefs
from deltabelief.integrations.verl.packed_belief import layout_tokens, score_beliefs_packed
from deltabelief.integrations.verl.config_gen import (
    AGENT_LOOP_NAME, CONFIG_SECTION, check_composed_config, compose_verl_config, config_from_section,
    write_agent_loop_config,
)
from deltabelief.integrations.verl.estimator import use_estimator_options  # (also registers the estimators)
from deltabelief.integrations.verl.reward_manager import BELIEF_KEY, BELIEF_MASK_KEY, DeltaBeliefRewardManager
from deltabelief.shared_storage import is_local_path, require_on_shared_storage
from deltabelief.types import Target

log = logging.getLogger(__name__)


class DeltaBeliefTrainer(RayPPOTrainer):
    """verl's PPO trainer with ΔBelief per-turn rewards scored by the actor (see the module docstring)."""

    def __init__(self, config: DictConfig, *args: Any, **kwargs: Any):
        check_composed_config(config)
        use_estimator_options(config_from_section(config[CONFIG_SECTION]).estimator)
        super().__init__(config, *args, **kwargs)

    def _compute_old_log_prob(self, batch: DataProto):
        if TURN_ENDS_KEY in batch.non_tensor_batch:
            self._write_delta_belief_rewards(batch)
        return super()._compute_old_log_prob(batch)

    def _update_actor(self, batch: DataProto) -> DataProto:
        metrics = self.__dict__.pop("_delta_belief_metrics", None)  # this step's, never a stale step's
        if not metrics or not any(name.startswith("belief/") for name in metrics):
            raise RuntimeError("the actor update has no ΔBelief metrics for this step: the reward hook "
                               "(_compute_old_log_prob) did not run, so the step would train without ΔBelief rewards")
        output = super()._update_actor(batch)
        output.meta_info["metrics"].update(metrics)
        return output

    def _write_delta_belief_rewards(self, batch: DataProto) -> None:
        """Score beliefs, compute r_t, and overwrite ``rm_scores`` [B, L] in place."""
        if "rm_scores" not in batch.batch.keys():
            raise KeyError("the rollout batch has no rm_scores: the agent loop must set reward_score")
        settings = config_from_section(self.config[CONFIG_SECTION])
        log_beliefs, mask, cost = self._score_beliefs(batch, settings)
        batch.batch[BELIEF_KEY], batch.batch[BELIEF_MASK_KEY] = log_beliefs, mask  # [B, T+1]
        manager = DeltaBeliefRewardManager(self.tokenizer, reward=settings.reward,
                                           estimator_name=settings.estimator.name,
                                           unanswerable_as_invalid=settings.judge.unanswerable_as_invalid)
        out = manager(batch, return_dict=True)
        batch.pop(batch_keys=[BELIEF_KEY, BELIEF_MASK_KEY])  # the workers never see them
        self.last_beliefs = (log_beliefs, mask)  # [B, T+1] each, for inspection
        rm_scores = batch.batch["rm_scores"]  # [B, L], the tensor fit() already holds as the reward
        rm_scores.copy_(out["reward_tensor"].to(rm_scores.device, rm_scores.dtype))
        truncated = [bool(v) for v in batch.non_tensor_batch["db_truncated"]]
        failed = exclude_failed_games(batch)
        self._delta_belief_metrics = {**out["metrics"], **cost,
                                      "rollout/truncated_rate": sum(truncated) / len(truncated),
                                      "judge/failed_games": float(len(failed))}

    def _score_beliefs(self, batch: DataProto, settings: Config) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        """``(log_beliefs [B, T+1], mask [B, T+1], cost metrics)`` in the configured layout."""
        template, layout = settings.belief.template, settings.cluster.belief_layout
        tokens = layout_tokens(batch, self.tokenizer, template)
        cost = {"belief/tokens_per_trajectory_token": tokens[layout] / max(tokens["trajectory"], 1)}
        if layout == "per_prefix":
            log_beliefs, mask = score_batch_beliefs(
                batch, self.tokenizer, template, self._actor_log_probs,
                chunk_size=settings.cluster.belief_chunk_size, on_unlocatable=settings.belief.on_unlocatable)
            return log_beliefs, mask, cost
        scored = score_beliefs_packed(batch, self.tokenizer, template, self._actor_packed_beliefs,
                                      micro_batch_size=settings.ppo.micro_batch_size,
                                      on_unlocatable=settings.belief.on_unlocatable)
        cost["belief/forward_tokens_per_trajectory_token"] = scored.forward_tokens / max(tokens["trajectory"], 1)
        return scored.log_beliefs, scored.mask, cost

    def _actor_log_probs(self, rows: DataProto) -> torch.Tensor:
        """[M, R] log π of the rows' response tokens from the actor worker group (temperature 1)."""
        dp_size = self._get_dp_size(self.actor_rollout_wg, "actor")
        padded, _ = pad_dataproto_to_divisor(rows, dp_size)  # the worker group splits rows evenly
        padded.meta_info = {**rows.meta_info, "temperature": 1.0,
                            "global_token_num": padded.batch["attention_mask"].sum(dim=1).tolist()}
        batch_td = left_right_2_no_padding(padded.to_tensordict())
        tu.assign_non_tensor(batch_td, calculate_entropy=False, compute_loss=False)
        output = self.actor_rollout_wg.compute_log_prob(batch_td)
        log_probs = no_padding_2_padding(tu.get(output, "log_probs"), batch_td)  # [M + pad, R]
        return log_probs[: len(rows)].float()

    def _actor_packed_beliefs(self, payload: DataProto) -> DataProto:
        """The actor worker group's packed belief pass on ``payload`` (one row per rollout)."""
        dp_size = self._get_dp_size(self.actor_rollout_wg, "actor")
        padded, pad = pad_dataproto_to_divisor(payload, dp_size)  # equal rows, so equal forwards, per rank
        out = self.actor_rollout_wg.compute_packed_beliefs(padded)
        return out[: len(payload)] if pad else out


def exclude_failed_games(batch: DataProto) -> list[int]:
    """Take games whose judge failed out of the update; returns their rows.

    The agent loop already gave them an all-0 ``response_mask`` and no turns (no loss, no reward);
    here each also gets a group of its own (a fresh ``uid``), so it neither counts in its group's
    statistics nor gets an advantage (a group of one has zero advantage). A step where every game
    failed is an outage, not bad luck: it raises with the first error.
    """
    errors = [str(e) for e in batch.non_tensor_batch["db_judge_failed"]]
    failed = [row for row, error in enumerate(errors) if error]
    if failed and len(failed) == len(errors):
        raise RuntimeError(f"the judge failed for all {len(errors)} games of the step; first error: {errors[failed[0]]}")
    uids = batch.non_tensor_batch["uid"]
    for row in failed:
        uids[row] = f"{uids[row]}/judge-failed/{row}"
    if failed:
        log.warning("%d of %d games left out of the update after judge failures, e.g. %s",
                    len(failed), len(errors), errors[failed[0]])
    return failed


@ray.remote
class DeltaBeliefTaskRunner(BaseTaskRunner):
    """verl's task runner (a Ray actor on the cluster) building :class:`DeltaBeliefTrainer`."""

    def add_actor_rollout_worker(self, config):
        """verl's choice of actor worker and role, with our subclass (``compute_packed_beliefs``) as the worker."""
        from verl.trainer.ppo.ray_trainer import Role

        from deltabelief.integrations.verl.belief_worker import DeltaBeliefActorRolloutRefWorker

        _, worker_group_cls = super().add_actor_rollout_worker(config)
        # the role verl chose (ActorRolloutRef when the reference policy is fused in), as init_workers reads it
        role = Role.ActorRolloutRef if Role.ActorRolloutRef in self.role_worker_mapping else Role.ActorRollout
        self.role_worker_mapping[role] = ray.remote(DeltaBeliefActorRolloutRefWorker)
        return DeltaBeliefActorRolloutRefWorker, worker_group_cls

    def run(self, config: DictConfig) -> None:
        from verl.trainer.ppo.utils import create_rl_dataset, create_rl_sampler, need_critic, need_reference_policy
        from verl.utils.config import omega_conf_to_dataclass, validate_config
        from verl.utils.dataset.rl_dataset import collate_fn
        from verl.workers.config import HFModelConfig

        log.info("ΔBelief task runner on %s (pid %d)", socket.gethostname(), os.getpid())
        OmegaConf.resolve(config)
        tracking_uri = config_from_section(config[CONFIG_SECTION]).tracking.tracking_uri
        if tracking_uri:  # verl's mlflow logger reads the environment of this process
            os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
        _, worker_group_cls = self.add_actor_rollout_worker(config)
        self.add_critic_worker(config)
        self.add_reward_model_resource_pool(config)
        self.add_teacher_model_resource_pool(config)
        validate_config(config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config))
        model_config: HFModelConfig = omega_conf_to_dataclass(config.actor_rollout_ref.model)
        tokenizer, processor = model_config.tokenizer, model_config.processor
        data = config.data
        train_dataset = create_rl_dataset(data.train_files, data, tokenizer, processor, is_train=True,
                                          max_samples=data.get("train_max_samples", -1))
        val_dataset = create_rl_dataset(data.val_files, data, tokenizer, processor, is_train=False,
                                        max_samples=data.get("val_max_samples", -1))
        trainer = DeltaBeliefTrainer(
            config=config, tokenizer=tokenizer, processor=processor,
            role_worker_mapping=self.role_worker_mapping, resource_pool_manager=self.init_resource_pool_mgr(config),
            ray_worker_group_cls=worker_group_cls, train_dataset=train_dataset, val_dataset=val_dataset,
            collate_fn=collate_fn, train_sampler=create_rl_sampler(data, train_dataset),
        )
        trainer.init_workers()
        trainer.fit()


def dataset_rows(targets: list[Target], config: Config) -> list[dict[str, Any]]:
    """verl RL dataset rows: the opening messages as ``prompt``, the target in ``extra_info``."""
    game = build_game(config.game)
    rows = []
    for index, target in enumerate(targets):
        messages = [dict(m) for m in (target.messages or game.opening_messages(target))]
        rows.append({
            "data_source": target.task,
            "prompt": messages,
            "agent_name": AGENT_LOOP_NAME,
            "reward_model": {"style": "rule", "ground_truth": target.answer},
            "extra_info": {"index": index, "target_id": target.id, "task": target.task, "target": target.answer,
                           "extra_json": target.extra_json()},
        })
    return rows


def write_verl_dataset(targets: list[Target], config: Config, path: str | Path) -> Path:
    """Write ``targets`` as a verl RL parquet file (read by ``verl.utils.dataset.RLHFDataset``)."""
    import pandas as pd

    if not targets:
        raise ValueError(f"no targets to write to {path}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(dataset_rows(targets, config)).to_parquet(path, index=False)
    return path


def prepare_verl_run(config: Config, targets_path: str | Path, out_dir: str | Path,
                     exclude_ids: Sequence[str] = ()) -> DictConfig:
    """Dataset files, agent-loop yaml and the composed verl config (saved as ``verl_config.yaml``).

    ``exclude_ids``: train targets to leave out (calibration's unlocatable targets), each logged.
    """
    from deltabelief.data.targets import read_targets

    out = Path(out_dir)
    excluded = set(exclude_ids)
    train = [t for t in read_targets(targets_path, "train") if t.id not in excluded]
    if excluded:
        log.info("left out %d excluded train targets, e.g. %s", len(excluded), sorted(excluded)[:3])
    val = read_targets(targets_path, "val")
    if len(train) < config.train.targets_per_step:
        raise ValueError(f"{targets_path}: {len(train)} train targets, fewer than train.targets_per_step="
                         f"{config.train.targets_per_step} (a step would never fill)")
    if not val:
        raise ValueError(f"{targets_path}: the val split is empty; verl validates on it")
    verl_config = compose_verl_config(
        config,
        train_files=str(write_verl_dataset(train, config, out / "data" / "train.parquet")),
        val_files=str(write_verl_dataset(val, config, out / "data" / "val.parquet")),
        out_dir=str(out),
        agent_loop_config_path=str(write_agent_loop_config(out / "agent_loops.yaml")),
    )
    OmegaConf.save(verl_config, out / "verl_config.yaml")
    return verl_config


def last_actor_checkpoint(checkpoint_dir: str | Path) -> Path:
    """``<checkpoint_dir>/global_step_<n>/actor`` for the step verl recorded last."""
    marker = Path(checkpoint_dir) / "latest_checkpointed_iteration.txt"
    if not marker.exists():
        raise FileNotFoundError(f"no {marker}: verl saved no checkpoint (is train.checkpoint_every > 0?)")
    actor = Path(checkpoint_dir) / f"global_step_{int(marker.read_text().strip())}" / "actor"
    if not actor.is_dir():
        raise FileNotFoundError(f"{marker} names {actor}, which does not exist")
    return actor


def export_hf_model(actor_dir: str | Path, target_dir: str | Path) -> Path:
    """A verl FSDP actor checkpoint -> a transformers directory; a LoRA adapter is merged into the weights.

    Uses verl's own model merger, then peft's ``merge_and_unload`` when the merger wrote a
    ``lora_adapter`` directory, so the evaluation stage loads one plain checkpoint.
    """
    from verl.model_merger.base_model_merger import ModelMergerConfig
    from verl.model_merger.fsdp_model_merger import FSDPModelMerger

    actor_dir, target_dir = Path(actor_dir), Path(target_dir)
    raw = target_dir / "verl_export"
    merger = FSDPModelMerger(ModelMergerConfig(operation="merge", backend="fsdp", target_dir=str(raw),
                                               local_dir=str(actor_dir),
                                               hf_model_config_path=str(actor_dir / "huggingface")))
    merger.merge_and_save()
    merger.cleanup()
    adapter = raw / "lora_adapter"
    if not adapter.exists():
        return raw
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(raw, dtype=torch.bfloat16),
                                       adapter).merge_and_unload()
    out = target_dir / "model"
    merged.save_pretrained(out)
    AutoTokenizer.from_pretrained(raw).save_pretrained(out)
    return out


def require_shared_paths(config: Config, targets_path: str | Path, out_dir: str | Path) -> None:
    """The model (unless a hub id), the targets and the output directory are on the shared volume."""
    paths: dict[str, str | Path] = {"targets": targets_path, "out_dir": out_dir}
    if is_local_path(config.policy.model):
        paths["policy.model"] = config.policy.model
    require_on_shared_storage(paths)


def run_verl(config: Config, targets_path: str | Path, out_dir: str | Path,
             exclude_ids: Sequence[str] = ()) -> dict[str, Any]:
    """Train ``config`` on a Ray cluster with verl (FSDP actor, vLLM rollouts); GPU only.

    Joins the running Ray cluster when there is one (verl calls ``ray.init`` otherwise), trains,
    and exports the last checkpoint as a transformers directory. Returns where everything went.
    Every path verl's workers read or write must lie under ``$DELTABELIEF_SHARED_DIR``; anything
    else is refused here, before any work.
    """
    require_shared_paths(config, targets_path, out_dir)
    verl_config = prepare_verl_run(config, targets_path, out_dir, exclude_ids)
    run_ppo(verl_config, task_runner_class=DeltaBeliefTaskRunner)
    out = Path(out_dir)
    checkpoint_dir = Path(verl_config.trainer.default_local_dir)
    model_dir = export_hf_model(last_actor_checkpoint(checkpoint_dir), out / "final")
    return {
        "model_dir": str(model_dir),
        "out_dir": str(out),
        "checkpoint_dir": str(checkpoint_dir),
        "verl_config": str(out / "verl_config.yaml"),
        "num_steps": config.train.num_steps,
        "rollouts_per_step": config.train.targets_per_step * config.train.rollouts_per_target,
    }
