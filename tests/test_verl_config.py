"""Config generation: our presets composed into verl's own ``ppo_trainer`` config, offline.

Composition is real Hydra over verl 0.9.1's packaged yaml; validation is verl's ``validate_config``
and its config dataclasses. The one check that needs vLLM (the allowed LoRA ranks) is replaced by a
recorder, since vLLM is not installed on CPU.
"""

from __future__ import annotations

import json
import subprocess
import sys
import types

import pandas as pd
import pytest
from omegaconf import OmegaConf
from verl.trainer.main_ppo_v0 import BaseTaskRunner
from verl.trainer.ppo.utils import need_critic, need_reference_policy
from verl.utils.config import omega_conf_to_dataclass, validate_config

from deltabelief.config import ConfigError, load_config
from deltabelief.integrations.verl import runner
from deltabelief.integrations.verl.config_gen import (
    check_composed_config,
    compose_verl_config, config_from_section, response_length, to_verl_overrides,
)

PAPER_PRESETS = ("qwen3-1.7b", "qwen3-4b")


@pytest.fixture(scope="module")
def paper():
    return {name: compose_verl_config(load_config(name)) for name in PAPER_PRESETS + ("qwen3-1.7b-grpo",)}


@pytest.mark.parametrize("preset", PAPER_PRESETS)
def test_composed_paper_preset_carries_the_papers_values(paper, preset):
    cfg = paper[preset]
    model, actor, rollout = cfg.actor_rollout_ref.model, cfg.actor_rollout_ref.actor, cfg.actor_rollout_ref.rollout
    assert (model.lora_rank, model.lora_alpha, model.target_modules) == (64, 64, "all-linear")
    assert actor.optim.lr == pytest.approx(3e-5)
    assert list(actor.optim.betas) == [0.9, 0.95] and actor.optim.weight_decay == 0.01
    assert actor.optim.clip_grad == 1.0 and actor.grad_clip == 1.0
    assert rollout.n == 16 and cfg.data.train_batch_size == 240
    assert actor.ppo_mini_batch_size == 80  # targets; verl multiplies by n: 1280 trajectories
    assert (actor.clip_ratio_low, actor.clip_ratio_high, actor.clip_ratio_c) == (0.2, 0.28, 3.0)
    assert actor.use_kl_loss is False and cfg.algorithm.use_kl_in_reward is False and actor.entropy_coeff == 0
    assert actor.loss_agg_mode == "token-mean" and actor.ppo_epochs == 1
    assert rollout.temperature == 1.0
    assert (rollout.val_kwargs.temperature, rollout.val_kwargs.top_p, rollout.val_kwargs.top_k) == (0.7, 0.8, 20)
    assert cfg.deltabelief.game.max_turns == 20 and cfg.deltabelief.policy.max_new_tokens == 50
    assert rollout.response_length == cfg.data.max_response_length == 20 * (50 + 1 + 64)
    assert cfg.algorithm.adv_estimator == "delta_belief_turn_grpo"
    assert cfg.deltabelief.estimator.include_finished is True and cfg.algorithm.norm_adv_by_std_in_grpo is True
    assert rollout.agent.default_agent_loop == "deltabelief_game" and rollout.name == "vllm"
    assert cfg.trainer.total_training_steps == 60 and cfg.trainer.use_v1 is False
    assert cfg.data.apply_chat_template_kwargs.enable_thinking is False


@pytest.mark.parametrize("preset", PAPER_PRESETS)
def test_verl_validates_the_composed_config(paper, preset, monkeypatch):
    ranks = []
    stub = types.ModuleType("verl.workers.rollout.vllm_rollout.utils")
    stub.get_vllm_max_lora_rank = ranks.append  # vLLM's allowed-rank check, recorded instead
    monkeypatch.setitem(sys.modules, stub.__name__, stub)
    cfg = paper[preset]
    assert need_critic(cfg) is False and need_reference_policy(cfg) is False
    validate_config(cfg, use_reference_policy=False, use_critic=False)
    assert ranks == [64]
    actor = omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)  # verl's typed actor config
    assert (actor.clip_ratio_high, actor.clip_ratio_c, actor.ppo_mini_batch_size) == (0.28, 3.0, 80)
    rollout = omega_conf_to_dataclass(cfg.actor_rollout_ref.rollout)
    assert rollout.n == 16 and rollout.val_kwargs.top_k == 20
    algorithm = omega_conf_to_dataclass(cfg.algorithm)  # verl's AlgoConfig: no keys of ours in the section
    assert algorithm.adv_estimator == "delta_belief_turn_grpo" and not algorithm.rollout_correction["bypass_mode"]


def test_bypass_mode_is_refused_because_it_skips_the_reward_hook(paper):
    cfg = paper["qwen3-1.7b"].copy()
    cfg.algorithm.rollout_correction.bypass_mode = True
    with pytest.raises(ConfigError, match="bypass_mode=true is not supported"):
        check_composed_config(cfg)
    with pytest.raises(ConfigError, match="bypass_mode"):  # the trainer refuses it before building anything
        runner.DeltaBeliefTrainer(config=cfg)


def _flat(cfg) -> dict:
    out = {}

    def walk(node, prefix):
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:
                out[f"{prefix}{key}"] = value
    walk(OmegaConf.to_container(cfg, resolve=False), "")
    return out


def test_baseline_differs_from_delta_belief_only_in_method_keys(paper):
    ours, base = _flat(paper["qwen3-1.7b"]), _flat(paper["qwen3-1.7b-grpo"])
    assert set(ours) == set(base)
    differing = {key for key in ours if ours[key] != base[key]}
    assert differing == {"algorithm.adv_estimator", "trainer.experiment_name", "deltabelief.name",
                         "deltabelief.estimator.name", "deltabelief.reward.belief_reward_weight"}
    assert base["algorithm.adv_estimator"] == "delta_belief_grpo"


def test_the_deltabelief_section_rebuilds_the_same_config(paper):
    assert config_from_section(paper["qwen3-4b"].deltabelief) == load_config("qwen3-4b")


def test_overrides_are_hydra_strings_and_odd_values_are_quoted():
    config = load_config("qwen3-1.7b", ["policy.model=/models/sft out, v2"])
    overrides = to_verl_overrides(config)
    assert "actor_rollout_ref.model.path='/models/sft out, v2'" in overrides
    assert not [o for o in overrides if "delta_belief." in o]  # nothing of ours inside verl's sections
    assert compose_verl_config(config).actor_rollout_ref.model.path == "/models/sft out, v2"


@pytest.mark.parametrize("override, message", [
    ("estimator.name=gigpo", "estimator.name='gigpo' is not available"),
    ("judge.backend=local", "judge.backend='local' cannot run"),
    ("ppo.mini_batch_size=1000", "ppo.mini_batch_size=1000 .* multiple of train.rollouts_per_target=16"),
    ("ppo.mini_batch_size=1120", "70 targets must divide train.targets_per_step=240"),
])
def test_settings_verl_cannot_honour_are_refused(override, message):
    with pytest.raises(ConfigError, match=message):
        to_verl_overrides(load_config("qwen3-1.7b", [override]))


def test_response_length_budget():
    assert response_length(load_config("tiny")) == 4 * (12 + 1 + 64)


def test_importing_the_package_and_config_gen_does_not_import_verl():
    code = ("import sys, deltabelief, deltabelief.integrations.verl, deltabelief.integrations.verl.config_gen; "
            "print(json.dumps(sorted(m for m in sys.modules if m == 'verl' or m.startswith('verl.'))))")
    out = subprocess.run([sys.executable, "-c", "import json; " + code], check=True, capture_output=True, text=True)
    assert json.loads(out.stdout) == []


def _targets(path, num_train: int, num_val: int):
    nouns = ["dog", "apple", "car", "chair", "cat", "table", "bed"]
    rows = [{"id": f"twenty_questions-{i:05d}", "task": "twenty_questions", "target": nouns[i],
             "split": "train" if i < num_train else "val", "messages": [], "extra": "{}"}
            for i in range(num_train + num_val)]
    pd.DataFrame(rows).to_parquet(path, index=False)
    return path


def test_run_verl_prepares_files_launches_our_task_runner_and_exports_the_last_checkpoint(tmp_path, monkeypatch):
    launched, exported = {}, {}

    def fake_run_ppo(cfg, task_runner_class):  # what verl leaves behind: checkpoints and a marker
        launched.update(cfg=cfg, cls=task_runner_class)
        checkpoints = tmp_path / "run" / "checkpoints"
        (checkpoints / "global_step_6" / "actor").mkdir(parents=True)
        (checkpoints / "latest_checkpointed_iteration.txt").write_text("6")

    monkeypatch.setattr(runner, "run_ppo", fake_run_ppo)
    monkeypatch.setenv("DELTABELIEF_SHARED_DIR", str(tmp_path))  # everything below lies on the "volume"
    monkeypatch.setattr(runner, "export_hf_model", lambda actor, target: exported.update(actor=actor) or target)
    config = load_config("tiny")
    targets = _targets(tmp_path / "targets.parquet", 5, 2)
    summary = runner.run_verl(config, targets, tmp_path / "run", exclude_ids=["twenty_questions-00002"])
    assert launched["cls"] is runner.DeltaBeliefTaskRunner
    assert issubclass(runner.DeltaBeliefTaskRunner.__ray_metadata__.modified_class, BaseTaskRunner)
    cfg = launched["cfg"]
    assert cfg.data.train_files.endswith("data/train.parquet") and cfg.data.val_files.endswith("data/val.parquet")
    train = pd.read_parquet(cfg.data.train_files)
    assert [info["target"] for info in train["extra_info"]] == ["dog", "apple", "chair", "cat"]  # 'car' excluded
    assert set(train["agent_name"]) == {"deltabelief_game"}
    assert [m["role"] for m in train["prompt"][0]] == ["system", "user"]  # the game's opening messages
    assert OmegaConf.load(summary["verl_config"]).deltabelief.name == "tiny"
    assert cfg.actor_rollout_ref.rollout.agent.agent_loop_config_path.endswith("agent_loops.yaml")
    assert exported["actor"] == tmp_path / "run" / "checkpoints" / "global_step_6" / "actor"  # the fake's last
    assert summary["model_dir"] == str(tmp_path / "run" / "final")
    assert summary["rollouts_per_step"] == config.train.targets_per_step * config.train.rollouts_per_target


def test_run_verl_refuses_too_few_targets(tmp_path):
    with pytest.raises(ValueError, match="3 train targets, fewer than train.targets_per_step=4"):
        runner.prepare_verl_run(load_config("tiny"), _targets(tmp_path / "t.parquet", 3, 1), tmp_path / "run")
    with pytest.raises(ValueError, match="val split is empty"):
        runner.prepare_verl_run(load_config("tiny"), _targets(tmp_path / "u.parquet", 4, 0), tmp_path / "run")
