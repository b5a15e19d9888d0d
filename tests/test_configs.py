"""Presets load strictly; bad keys and types are refused by name; baselines differ only in method keys."""

from pathlib import Path

import pytest
import yaml

from deltabelief.config import CONFIG_DIR, ConfigError, config_to_dict, flatten, load_config

PRESETS = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
# A baseline preset may differ from its ΔBelief preset only here (docs/training.md, "Presets").
METHOD_KEYS = {"name", "estimator.name", "reward.belief_reward_weight"}


def _keys(tree: dict, prefix: str = "") -> set[str]:
    out = set()
    for key, value in tree.items():
        name = f"{prefix}{key}"
        out |= _keys(value, f"{name}.") if isinstance(value, dict) else {name}
    return out


def test_the_required_presets_exist():
    assert {"tiny", "cpu", "qwen3-1.7b", "qwen3-4b"} <= set(PRESETS)


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_loads_strictly_and_every_key_is_a_field(preset):
    config = load_config(preset)
    assert config.name == preset
    resolved = flatten(config_to_dict(config))
    written = _keys(yaml.safe_load((CONFIG_DIR / f"{preset}.yaml").read_text())) - {"extends"}
    assert written <= set(resolved), sorted(written - set(resolved))  # every key written is read


VARIANT_SUFFIXES = {"-grpo": ("grpo", 0.0), "-turn-rloo": ("turn_rloo", 0.1)}  # estimator, λ


@pytest.mark.parametrize("preset", [p for p in PRESETS if p.endswith(tuple(VARIANT_SUFFIXES))])
def test_method_variant_presets_differ_only_in_method_keys(preset):
    suffix = next(s for s in VARIANT_SUFFIXES if preset.endswith(s))
    variant = flatten(config_to_dict(load_config(preset)))
    method = flatten(config_to_dict(load_config(preset.removesuffix(suffix))))
    differing = {k for k in variant if variant[k] != method[k]}
    assert differing <= METHOD_KEYS, sorted(differing - METHOD_KEYS)
    assert (variant["estimator.name"], variant["reward.belief_reward_weight"]) == VARIANT_SUFFIXES[suffix]


@pytest.mark.parametrize("preset", ["qwen3-1.7b", "qwen3-4b"])
def test_paper_presets_carry_the_paper_values(preset):
    c = load_config(preset)
    assert (c.policy.lora.enabled, c.policy.lora.r, c.policy.lora.alpha, c.policy.lora.target_modules) == (
        True, 64, 64, "all-linear")
    assert c.optim.lr == 3e-5 and c.optim.betas == [0.9, 0.95] and c.optim.weight_decay == 0.01
    assert c.optim.grad_clip == 1.0
    assert (c.train.rollouts_per_target, c.train.targets_per_step, c.train.num_steps) == (16, 240, 60)
    assert c.game.max_turns == 20 and c.policy.max_new_tokens == 50
    assert c.policy.temperature == 1.0
    assert (c.policy.eval_temperature, c.policy.eval_top_p, c.policy.eval_top_k) == (0.7, 0.8, 20)
    assert (c.ppo.clip_low, c.ppo.clip_high, c.ppo.dual_clip) == (0.2, 0.28, 3.0)
    assert (c.judge.backend, c.judge.model, c.judge.temperature) == ("openai", "Qwen/Qwen3-14B", 0.7)
    assert c.train.backend == "verl"
    assert c.estimator.name == "turn_grpo" and c.reward.belief_reward_weight == 0.1


def test_embedded_presets_run_on_the_torch_trainer_offline():
    cpu, tiny = load_config("cpu"), load_config("tiny")
    assert cpu.policy.model == "smollm2" and cpu.judge.backend == "kb" and cpu.train.backend == "torch"
    assert tiny.policy.model == "tiny" and tiny.judge.backend == "kb" and len(tiny.game.kb_nouns) == 4


def _preset_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    return path


def test_a_preset_extends_another_and_overrides_only_what_it_writes(tmp_path):
    path = tmp_path / "longer.yaml"
    path.write_text("extends: cpu\nname: longer\nsft: {epochs: 9}\n")
    config, cpu = load_config(path), load_config("cpu")
    assert (config.name, config.sft.epochs, config.sft.lr) == ("longer", 9, cpu.sft.lr)
    assert config.game.kb_nouns == cpu.game.kb_nouns


def test_presets_extending_each_other_in_a_loop_are_refused(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: " + str(tmp_path / "b.yaml") + "\n")
    (tmp_path / "b.yaml").write_text("extends: " + str(tmp_path / "a.yaml") + "\n")
    with pytest.raises(ConfigError, match="extend each other in a loop: a -> b -> a"):
        load_config(tmp_path / "a.yaml")


def test_unknown_key_is_refused_with_its_name_and_the_valid_ones(tmp_path):
    with pytest.raises(ConfigError, match=r"ppo\.clip_lo'.*clip_low"):
        load_config(_preset_file(tmp_path, "ppo:\n  clip_lo: 0.2\n"))
    with pytest.raises(ConfigError, match=r"traning"):
        load_config(_preset_file(tmp_path, "traning:\n  num_steps: 3\n"))
    with pytest.raises(ConfigError, match=r"train\.num_step'"):
        load_config("tiny", ["train.num_step=3"])


def test_wrong_type_is_refused_with_the_field_name(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.num_steps: expected an integer"):
        load_config(_preset_file(tmp_path, "train:\n  num_steps: ten\n"))
    with pytest.raises(ConfigError, match=r"ppo\.old_logprobs: 'fresh' is not one of"):
        load_config("tiny", ["ppo.old_logprobs=fresh"])
    with pytest.raises(ConfigError, match=r"policy\.lora\.enabled: expected true/false"):
        load_config("cpu", ["policy.lora.enabled=1"])
    with pytest.raises(ConfigError, match=r"estimator\.name: 'ppo' is not one of"):
        load_config("cpu", ["estimator.name=ppo"])


def test_overrides_apply_on_top_of_a_preset():
    config = load_config("cpu", ["estimator.name=gigpo", "train.num_steps=2", "optim.lr=0.0001"])
    assert (config.estimator.name, config.train.num_steps, config.optim.lr) == ("gigpo", 2, 0.0001)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["train.num_steps=-5"], r"train\.num_steps = -5 must be >= 1"),
        (["train.num_steps=0"], r"train\.num_steps = 0 must be >= 1"),
        (["policy.top_p=1.5"], r"policy\.top_p = 1\.5 must be in \(0, 1\]"),
        (["data.noise_epsilon=-0.1"], r"data\.noise_epsilon = -0\.1 must be in \[0, 1\]"),
        (["eval.budgets=[10, 0]"], r"eval\.budgets\[1\] = 0 must be >= 1"),
        (["game.max_turns=0"], r"game\.max_turns = 0 must be >= 1"),
        (["eval.judge.timeout_s=0"], r"eval\.judge\.timeout_s = 0\.0 must be > 0"),  # a section used twice
        (["optim.lr=.nan"], r"optim\.lr = nan must be > 0"),
        (["ppo.dual_clip=1"], r"ppo\.dual_clip = 1\.0 must be > 1"),
        (["game.min_question_chars=50", "game.max_question_chars=10"], r"max_question_chars = 10 must be >= "),
        (["game.candidates_in_prompt=true", "data.source=words:nouns.txt"],
         r"candidates_in_prompt .* \(got 'twenty_questions', 'words:nouns\.txt', 4 nouns\)"),
        (["eval.warm_start_suites=[guess_my_city]"],
         r"eval\.warm_start_suites \['guess_my_city'\] are not in eval\.suites \['twenty_questions'\]"),
        (["game.candidates_in_prompt=true", "game.kb_nouns=[]"],
         r"candidates_in_prompt .* \(got 'twenty_questions', 'kb', 0 nouns\)"),
    ],
)
def test_values_out_of_range_are_refused_naming_key_value_and_rule(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config("tiny", overrides)


def test_every_range_violation_is_reported_at_once(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load_config(_preset_file(tmp_path, "train:\n  num_steps: -1\n  rollouts_per_target: 0\n"))
    assert "train.num_steps = -1" in str(caught.value) and "train.rollouts_per_target = 0" in str(caught.value)


def test_zero_is_accepted_where_the_field_gives_it_a_meaning():
    config = load_config("tiny", ["train.keep_checkpoints=0", "eval.num_targets=0", "policy.top_k=0"])
    assert (config.train.keep_checkpoints, config.eval.num_targets, config.policy.top_k) == (0, 0, 0)


@pytest.mark.parametrize("text", ["", "\n# only a comment\n"])
def test_an_empty_preset_file_is_refused_naming_the_file(tmp_path, text):
    path = _preset_file(tmp_path, text)
    with pytest.raises(ConfigError, match=rf"{path}: the preset file is empty"):
        load_config(path)
