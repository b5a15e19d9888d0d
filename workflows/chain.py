"""The pipeline's stage order, written once.

Workflows call these functions while Flyte compiles them; each lays out its stages as nodes of
the calling workflow and returns their outputs. The CPU and GPU pipelines differ only in the
training task they pass, so their stage order cannot drift apart.
"""

from __future__ import annotations

from typing import List

from flytekit.core.base_task import PythonTask
from flytekit.core.promise import Promise

from tasks.calibrate import calibrate
from tasks.compare import compare_to_warm_start
from tasks.evaluate import evaluate
from tasks.registry import promote, register
from tasks.setup import finish_run, resolve_config, start_run
from tasks.synthesize import synthesize
from tasks.validate import validate
from tasks.warm_start import warm_start


def register_and_promote(cfg: Promise, model: Promise, summary: Promise, run: Promise) -> Promise:
    """register (alias 'challenger') -> promote (the gate against the champion); returns the decision."""
    version = register(config=cfg, model=model, summary=summary, run=run)
    return promote(config=cfg, version=version, summary=summary, run=run)


def train_and_gate(cfg: Promise, run: Promise, datasets: Promise, start: Promise, targets: Promise,
                   train_task: PythonTask) -> tuple[Promise, Promise]:
    """calibrate -> train (``train_task``) -> evaluate -> register -> promote; returns (summary, decision)."""
    calibration = calibrate(config=cfg, model=start, datasets=datasets, run=run)
    model = train_task(config=cfg, model=start, targets=targets, calibration=calibration, run=run)
    summary = evaluate(config=cfg, model=model, run=run)
    return summary, register_and_promote(cfg, model, summary, run)


def delta_belief_chain(config: str, estimator: str, num_steps: int, overrides: List[str],
                       train_task: PythonTask) -> Promise:
    """synthesize -> validate -> warm_start -> :func:`train_and_gate` (and the warm start evaluated
    for the paired gain) -> finish; returns the promotion decision."""
    cfg = resolve_config(config=config, estimator=estimator, num_steps=num_steps, overrides=overrides)
    run = start_run(config=cfg)
    datasets = validate(datasets=synthesize(config=cfg), run=run)
    sft_model = warm_start(config=cfg, datasets=datasets, run=run)
    summary, decision = train_and_gate(cfg, run, datasets, sft_model, datasets.targets, train_task)
    gain = compare_to_warm_start(config=cfg, baseline=sft_model, summary=summary, run=run)
    gain >> finish_run(run=run, decision=decision)
    return decision
