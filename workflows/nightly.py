"""Nightly retraining that compounds: each night continues from the registry's champion.

``workflows/launch_plans.py`` schedules it (``deltabelief_nightly_retrain``) and passes the
kickoff time. To run one night by hand:
``pyflyte run workflows/nightly.py nightly_retrain_pipeline --kickoff_time 2025-01-02T02:00:00``.
"""

from __future__ import annotations

from datetime import datetime
from typing import List

from flytekit import workflow

from tasks.nightly import draw_targets, retrain_config, start_nightly_run, starting_model
from tasks.setup import finish_run, resolve_config
from tasks.synthesize import synthesize
from tasks.validate import validate
from workflows.chain import train_and_gate
from workflows.pipeline import DEFAULT_PRESET


@workflow
def nightly_retrain_pipeline(
    kickoff_time: datetime, config: str = DEFAULT_PRESET, estimator: str = "", num_steps: int = 0,
    overrides: List[str] = [],
) -> dict:
    """champion (else warm start) -> calibrate -> train on fresh targets -> evaluate -> register -> gate.

    Args:
        kickoff_time: the schedule's kickoff time; seeds the RL run and the draw of training targets.
        config, estimator, num_steps, overrides: as for ``delta_belief_pipeline``.
    """
    base = resolve_config(config=config, estimator=estimator, num_steps=num_steps, overrides=overrides)
    cfg = retrain_config(config=base, kickoff_time=kickoff_time)
    run = start_nightly_run(config=cfg, kickoff_time=kickoff_time)
    datasets = validate(datasets=synthesize(config=base), run=run)  # the seed-independent data: a cache hit
    start = starting_model(config=cfg, datasets=datasets, run=run)
    targets = draw_targets(config=cfg, datasets=datasets, run=run)
    _, decision = train_and_gate(cfg, run, datasets, start, targets)
    finish_run(run=run, decision=decision)
    return decision
