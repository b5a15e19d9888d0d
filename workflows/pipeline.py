"""The ΔBelief-RL pipeline and its companions.

``pyflyte run workflows/pipeline.py delta_belief_pipeline`` runs the embedded default
(configs/cpu.yaml) end to end on a CPU; ``--config configs/tiny.yaml`` runs the tiny preset.
"""

from __future__ import annotations

from typing import List

from flytekit import workflow
from flytekit.types.directory import FlyteDirectory

from deltabelief.pipeline import EvalSummary
from tasks.evaluate import evaluate
from tasks.setup import finish_run, resolve_config, start_run
from workflows.chain import delta_belief_chain, gpu_chain, register_and_promote

DEFAULT_PRESET = "configs/cpu.yaml"


@workflow
def delta_belief_pipeline(
    config: str = DEFAULT_PRESET, estimator: str = "", num_steps: int = 0, overrides: List[str] = []
) -> dict:
    """synthesize -> validate -> warm_start -> calibrate -> train -> evaluate (and the warm start, for the
    paired gain) -> register -> promote.

    Args:
        config: path of a YAML preset (configs/tiny.yaml, configs/cpu.yaml, ...).
        estimator: credit assignment (turn_grpo, grpo, rloo, gigpo, turn_rloo); empty keeps the preset's.
        num_steps: RL steps; 0 keeps the preset's.
        overrides: more 'section.key=value' overrides, checked against the typed config.
    """
    return delta_belief_chain(config, estimator, num_steps, overrides)


@workflow
def delta_belief_pipeline_gpu(
    config: str = "configs/qwen3-1.7b.yaml", estimator: str = "", num_steps: int = 0, overrides: List[str] = []
) -> dict:
    """The same pipeline on GPUs, each model stage sized from the preset given here: the warm start
    data-parallel on ``sft.processes`` GPUs, calibration on one, training on a Ray cluster of
    ``cluster.num_nodes`` x ``cluster.gpus_per_node`` (verl + vLLM for the paper presets), evaluation
    through a vLLM server on ``cluster.rollout_tensor_parallel`` GPUs (``eval.policy_server``)."""
    cfg = resolve_config(config=config, estimator=estimator, num_steps=num_steps, overrides=overrides)
    return gpu_chain(cfg=cfg)


@workflow
def evaluate_only(model: FlyteDirectory, config: str = DEFAULT_PRESET, overrides: List[str] = []) -> EvalSummary:
    """Evaluate a saved model directory on the preset's suites, tracked in MLflow."""
    cfg = resolve_config(config=config, estimator="", num_steps=0, overrides=overrides)
    run = start_run(config=cfg)
    summary = evaluate(config=cfg, model=model, run=run)
    finish_run(run=run, decision={})
    return summary


@workflow
def promote_model(model: FlyteDirectory, config: str = DEFAULT_PRESET, overrides: List[str] = []) -> dict:
    """Evaluate a saved model, register it as 'challenger' and gate it against the champion."""
    cfg = resolve_config(config=config, estimator="", num_steps=0, overrides=overrides)
    run = start_run(config=cfg)
    summary = evaluate(config=cfg, model=model, run=run)
    decision = register_and_promote(cfg, model, summary, run)
    finish_run(run=run, decision=decision)
    return decision
