"""Our typed :class:`~deltabelief.config.Config` -> verl's Hydra ``ppo_trainer`` config.

:func:`to_verl_overrides` writes the Hydra overrides (``key=value`` strings) that put a preset's
settings into verl's own ``trainer/config/ppo_trainer.yaml``; :func:`compose_verl_config` composes
that yaml with them, offline, from the installed verl package, and attaches our whole config as
the top-level ``deltabelief`` section (the agent loop and the trainer hook read it from there).
Neither imports verl: only its packaged yaml files are read.

Where the paper's settings land (docs/method.md, docs/cluster.md):

=====================================  ================================================================
ours                                   verl
=====================================  ================================================================
policy.lora (r 64, α 64, all-linear)   actor_rollout_ref.model.lora_rank / lora_alpha / target_modules
optim.lr 3e-5, betas, weight decay     actor_rollout_ref.actor.optim.*
optim.grad_clip 1.0                    actor.optim.clip_grad and actor.grad_clip
train.rollouts_per_target 16           actor_rollout_ref.rollout.n
train.targets_per_step 240             data.train_batch_size
ppo.mini_batch_size 1280               actor.ppo_mini_batch_size = 1280 / 16 = 80 targets (verl counts
                                       prompts and multiplies by n)
ppo.micro_batch_size                   actor.ppo_micro_batch_size_per_gpu, log-prob micro-batches
policy.dtype                           rollout.dtype (vLLM) and actor.fsdp_config.dtype (compute)
ppo.clip_low / clip_high 0.2 / 0.28    actor.clip_ratio_low / clip_ratio_high
ppo.dual_clip 3.0                      actor.clip_ratio_c
no KL, no entropy bonus                actor.use_kl_loss=false, algorithm.use_kl_in_reward=false,
                                       actor.entropy_coeff=0
token-mean                             actor.loss_agg_mode=token-mean
game.max_turns 20, max_new_tokens 50   deltabelief section (read by the agent loop); response_length
                                       = max_turns · (max_new_tokens + 1 + observation_token_reserve)
policy.temperature 1.0                 rollout.temperature (belief scoring always uses T = 1)
policy.eval_* 0.7 / 0.8 / 20           rollout.val_kwargs.temperature / top_p / top_k
estimator.name, estimator.norm_by_std  algorithm.adv_estimator, algorithm.norm_adv_by_std_in_grpo
estimator.include_finished, eps        deltabelief.estimator (read by the trainer, see estimator.py)
=====================================  ================================================================

The runner uses verl's DataProto trainer (``trainer.use_v1=false``): its ``RayPPOTrainer`` exposes
the actor's ``compute_log_prob`` to the driver, where beliefs are scored (see ``runner.py``).
Nothing of ours goes into verl's own sections, so each converts to verl's config dataclass
(``omega_conf_to_dataclass(cfg.algorithm)`` gives an ``AlgoConfig``). Settings under which the
ΔBelief rewards would be skipped are refused (:func:`check_composed_config`).
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

import yaml

from deltabelief.config import Config, ConfigError, config_to_dict

CONFIG_SECTION = "deltabelief"
"""Top-level key of the verl config that carries our whole :class:`Config` as a mapping."""
AGENT_LOOP_NAME = "deltabelief_game"
"""The agent loop's name in verl's agent-loop registry (``agent.default_agent_loop``)."""
AGENT_LOOP_TARGET = "deltabelief.integrations.verl.agent_loop.DeltaBeliefGameLoop"
ESTIMATOR_PREFIX = "delta_belief_"
"""Our estimators are registered with verl as ``delta_belief_<name>`` (``delta_belief_turn_grpo``)."""
VERL_ESTIMATORS = ("turn_grpo", "grpo", "rloo", "turn_rloo")
"""Estimators available on the verl backend (GiGPO needs step states the agent loop does not record)."""
JUDGE_BACKENDS = ("kb", "openai", "scripted")
"""Judges an agent-loop worker may use ('local' would load a model into every CPU worker)."""

_PLAIN = re.compile(r"^[A-Za-z0-9_./:@+-]+$")


def verl_config_dir() -> Path:
    """verl's packaged ``trainer/config`` directory, found without importing verl."""
    spec = importlib.util.find_spec("verl")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("the verl backend needs verl installed: pip install 'verl==0.9.1'")
    path = Path(list(spec.submodule_search_locations)[0]) / "trainer" / "config"
    if not (path / "ppo_trainer.yaml").exists():
        raise FileNotFoundError(f"verl is installed but {path / 'ppo_trainer.yaml'} is missing")
    return path


def response_length(config: Config) -> int:
    """Tokens one game may add after the prompt: every move, its end-of-turn and its answer."""
    per_turn = config.policy.max_new_tokens + 1 + config.cluster.observation_token_reserve
    return config.game.max_turns * per_turn


def check_verl_config(config: Config) -> None:
    """Refuse settings the verl backend cannot honour, naming the field and the rule."""
    if config.estimator.name not in VERL_ESTIMATORS:
        raise ConfigError(f"estimator.name={config.estimator.name!r} is not available on the verl backend; "
                          f"choose one of {list(VERL_ESTIMATORS)}")
    if config.judge.backend not in JUDGE_BACKENDS:
        raise ConfigError(f"judge.backend={config.judge.backend!r} cannot run inside verl's agent-loop workers; "
                          f"choose one of {list(JUDGE_BACKENDS)} (serve a model judge with vLLM and use 'openai')")
    group, mini = config.train.rollouts_per_target, config.ppo.mini_batch_size
    if group < 1 or mini < 1 or mini % group:
        raise ConfigError(f"ppo.mini_batch_size={mini} (trajectories) must be a positive multiple of "
                          f"train.rollouts_per_target={group}: verl's mini-batches hold whole groups")
    if config.train.targets_per_step % (mini // group):
        raise ConfigError(f"ppo.mini_batch_size / train.rollouts_per_target = {mini // group} targets must divide "
                          f"train.targets_per_step={config.train.targets_per_step}")
    if config.policy.lora.enabled and config.policy.lora.r < 1:
        raise ConfigError(f"policy.lora.r={config.policy.lora.r} must be positive when LoRA is enabled")


def _fmt(value: Any) -> str:
    """A Python value as a Hydra override value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_fmt(v) for v in value) + "]"
    text = str(value)
    if _PLAIN.match(text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _model_overrides(config: Config) -> dict[str, Any]:
    lora = config.policy.lora
    return {
        "actor_rollout_ref.model.path": config.policy.model,
        "actor_rollout_ref.model.lora_rank": lora.r if lora.enabled else 0,
        "actor_rollout_ref.model.lora_alpha": lora.alpha,
        "actor_rollout_ref.model.target_modules": lora.target_modules,
        "actor_rollout_ref.model.use_remove_padding": True,
        "actor_rollout_ref.model.enable_gradient_checkpointing": True,
    }


def _actor_overrides(config: Config) -> dict[str, Any]:
    ppo, optim = config.ppo, config.optim
    actor = "actor_rollout_ref.actor"
    return {
        f"{actor}.ppo_mini_batch_size": ppo.mini_batch_size // config.train.rollouts_per_target,  # targets
        f"{actor}.ppo_micro_batch_size_per_gpu": ppo.micro_batch_size,
        f"{actor}.ppo_epochs": ppo.ppo_epochs,
        f"{actor}.clip_ratio": ppo.clip_low,
        f"{actor}.clip_ratio_low": ppo.clip_low,  # ε_low
        f"{actor}.clip_ratio_high": ppo.clip_high,  # ε_high
        f"{actor}.clip_ratio_c": ppo.dual_clip,  # dual-clip constant
        f"{actor}.policy_loss.loss_mode": "vanilla",
        f"{actor}.loss_agg_mode": "token-mean",
        f"{actor}.use_kl_loss": False,
        f"{actor}.kl_loss_coef": 0.0,
        f"{actor}.entropy_coeff": 0.0,
        f"{actor}.grad_clip": optim.grad_clip,
        f"{actor}.fsdp_config.dtype": config.policy.dtype,
        f"{actor}.data_loader_seed": config.train.seed,
        f"{actor}.optim.lr": optim.lr,
        f"{actor}.optim.betas": list(optim.betas),
        f"{actor}.optim.weight_decay": optim.weight_decay,
        f"{actor}.optim.clip_grad": optim.grad_clip,
        f"{actor}.optim.lr_warmup_steps": optim.warmup_steps,
        "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu": ppo.micro_batch_size,
    }


def _rollout_overrides(config: Config, agent_loop_config_path: str) -> dict[str, Any]:
    policy, cluster = config.policy, config.cluster
    rollout = "actor_rollout_ref.rollout"
    return {
        f"{rollout}.name": "vllm",
        f"{rollout}.mode": "async",
        f"{rollout}.n": config.train.rollouts_per_target,  # G
        f"{rollout}.temperature": policy.temperature,
        f"{rollout}.top_p": policy.top_p,
        f"{rollout}.top_k": policy.top_k if policy.top_k > 0 else -1,  # verl: -1 disables top-k
        f"{rollout}.tensor_model_parallel_size": cluster.rollout_tensor_parallel,
        f"{rollout}.gpu_memory_utilization": cluster.gpu_memory_utilization,
        f"{rollout}.log_prob_micro_batch_size_per_gpu": config.ppo.micro_batch_size,
        f"{rollout}.dtype": policy.dtype,
        f"{rollout}.calculate_log_probs": True,
        f"{rollout}.multi_turn.enable": True,
        f"{rollout}.agent.num_workers": cluster.agent_loop_workers,
        f"{rollout}.agent.default_agent_loop": AGENT_LOOP_NAME,
        f"{rollout}.agent.agent_loop_config_path": agent_loop_config_path or None,
        f"{rollout}.val_kwargs.temperature": policy.eval_temperature,
        f"{rollout}.val_kwargs.top_p": policy.eval_top_p,
        f"{rollout}.val_kwargs.top_k": policy.eval_top_k if policy.eval_top_k > 0 else -1,
        f"{rollout}.val_kwargs.do_sample": True,
        f"{rollout}.val_kwargs.n": 1,
    }


def _trainer_overrides(config: Config, train_files: str, val_files: str, out_dir: str) -> dict[str, Any]:
    train, cluster = config.train, config.cluster
    return {
        "data.train_files": train_files or None,
        "data.val_files": val_files or None,
        "data.train_batch_size": train.targets_per_step,
        "data.max_prompt_length": cluster.max_prompt_tokens,
        "data.max_response_length": response_length(config),
        "data.return_raw_chat": True,
        "data.filter_overlong_prompts": False,
        "data.truncation": "error",
        "data.seed": train.seed,
        "+data.apply_chat_template_kwargs.enable_thinking": False,
        "trainer.use_v1": False,
        "trainer.nnodes": cluster.num_nodes,
        "trainer.n_gpus_per_node": cluster.gpus_per_node,
        "trainer.total_training_steps": train.num_steps,
        "trainer.total_epochs": train.num_steps,  # an upper bound: every epoch has at least one step
        "trainer.project_name": config.tracking.experiment,
        "trainer.experiment_name": config.name,
        "trainer.logger": ["console", "mlflow"],
        "trainer.default_local_dir": str(Path(out_dir) / "checkpoints"),
        "trainer.save_freq": train.checkpoint_every,
        "trainer.test_freq": train.checkpoint_every,
        "trainer.val_before_train": True,
        "trainer.balance_batch": True,
        "trainer.critic_warmup": 0,
        "trainer.device": "cuda",
    }


def _algorithm_overrides(config: Config) -> dict[str, Any]:
    est = config.estimator
    return {
        "algorithm.adv_estimator": ESTIMATOR_PREFIX + est.name,
        "algorithm.norm_adv_by_std_in_grpo": est.norm_by_std,
        "algorithm.use_kl_in_reward": False,
    }


def to_verl_overrides(
    config: Config, *, train_files: str = "", val_files: str = "", out_dir: str = "outputs/verl",
    agent_loop_config_path: str = "",
) -> list[str]:
    """Hydra overrides for verl's ``ppo_trainer`` config that reproduce ``config`` on verl.

    ``train_files``/``val_files`` are verl RL parquet files (:func:`...runner.write_verl_dataset`);
    ``agent_loop_config_path`` the yaml from :func:`write_agent_loop_config`. Empty strings leave
    verl's value (the files) or null (the agent-loop yaml).

    These alone do not make a run of verl's own ``main_ppo``: the agent loop also needs the
    ``deltabelief`` section and the rewards need the trainer hook; ``runner.run_verl`` does both.
    """
    check_verl_config(config)
    values: dict[str, Any] = {}
    values.update(_model_overrides(config))
    values.update(_actor_overrides(config))
    values.update(_rollout_overrides(config, agent_loop_config_path))
    values.update(_trainer_overrides(config, train_files, val_files, out_dir))
    values.update(_algorithm_overrides(config))
    return [f"{key}={_fmt(value)}" for key, value in values.items() if not _keeps_default(key, value)]


def _keeps_default(key: str, value: Any) -> bool:
    """Empty file lists keep verl's placeholder (compose still works without data)."""
    return key in ("data.train_files", "data.val_files") and value is None


def compose_verl_config(config: Config, **kwargs: str):
    """verl's ``ppo_trainer`` composed with :func:`to_verl_overrides` plus our ``deltabelief`` section.

    Composed offline with ``hydra.compose`` from the installed verl package's yaml; keyword
    arguments are those of :func:`to_verl_overrides`. Returns an ``omegaconf.DictConfig``.
    """
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf, open_dict

    overrides = to_verl_overrides(config, **kwargs)
    with initialize_config_dir(config_dir=str(verl_config_dir()), version_base=None):
        composed = compose(config_name="ppo_trainer", overrides=overrides)
    with open_dict(composed):
        composed[CONFIG_SECTION] = OmegaConf.create(config_to_dict(config))
    check_composed_config(composed)
    return composed


def check_composed_config(verl_config: Any) -> None:
    """Refuse a verl config under which verl would skip the ΔBelief reward hook.

    In rollout-correction bypass mode verl never calls ``_compute_old_log_prob``, where the trainer
    scores beliefs and writes the per-turn rewards, so the run would silently train without them.
    """
    correction = verl_config.algorithm.get("rollout_correction") or {}
    if correction.get("bypass_mode", False):
        raise ConfigError("algorithm.rollout_correction.bypass_mode=true is not supported: verl then skips the "
                          "old-log-prob pass where ΔBelief rewards are computed; set it to false")


def write_agent_loop_config(path: str | Path) -> Path:
    """The yaml verl's agent-loop workers read to register our loop in their own processes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump([{"name": AGENT_LOOP_NAME, "_target_": AGENT_LOOP_TARGET}]))
    return path


def config_from_section(section: Any) -> Config:
    """The ``deltabelief`` section of a verl config (DictConfig or mapping) -> :class:`Config`.

    Rebuilt with the same strict checks as a preset (an unknown key or a wrong type is refused).
    """
    from omegaconf import DictConfig, OmegaConf

    from deltabelief.config import config_from_dict

    values = OmegaConf.to_container(section, resolve=True) if isinstance(section, DictConfig) else dict(section)
    return config_from_dict(values)
