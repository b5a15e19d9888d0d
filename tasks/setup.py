"""Resolve the preset and open the pipeline's parent MLflow run."""

from __future__ import annotations

from typing import List

from flytekit import task

from deltabelief.config import Config, load_config
from deltabelief.pipeline import RunContext, finish_pipeline, start_pipeline
from images import cpu_image
from tasks.resources import LIGHT


@task(container_image=cpu_image, requests=LIGHT, limits=LIGHT)
def resolve_config(config: str, estimator: str, num_steps: int, overrides: List[str]) -> Config:
    """The preset at ``config`` with the typed overrides (empty / 0 keep the preset's value)."""
    extra = list(overrides)
    extra += [f"estimator.name={estimator}"] if estimator else []
    extra += [f"train.num_steps={num_steps}"] if num_steps else []
    return load_config(config, extra)


@task(container_image=cpu_image, requests=LIGHT, limits=LIGHT)
def start_run(config: Config) -> RunContext:
    return start_pipeline(config, run_name=f"pipeline-{config.name}")


@task(container_image=cpu_image, requests=LIGHT, limits=LIGHT)
def finish_run(run: RunContext, decision: dict) -> RunContext:
    """Close the parent run once promotion has decided (``decision`` orders it after promote)."""
    finish_pipeline(run)
    return run
