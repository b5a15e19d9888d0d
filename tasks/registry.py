"""Stages 7 and 8: register the trained policy in MLflow, then gate the 'champion' alias."""

from __future__ import annotations

from flytekit import task
from flytekit.types.directory import FlyteDirectory

from deltabelief.config import Config
from deltabelief.pipeline import EvalSummary, RunContext, promote_stage, register_stage
from images import cpu_image
from tasks.common import scratch
from tasks.resources import CPU_MODEL


@task(container_image=cpu_image, requests=CPU_MODEL, limits=CPU_MODEL)
def register(config: Config, model: FlyteDirectory, summary: EvalSummary, run: RunContext) -> str:
    """Log the model (transformers flavour) and register it; the new version gets 'challenger'."""
    return register_stage(config, model.download(), summary, run)


@task(container_image=cpu_image, requests=CPU_MODEL, limits=CPU_MODEL)  # may re-evaluate the champion
def promote(config: Config, version: str, summary: EvalSummary, run: RunContext) -> dict:
    """Move 'champion' only if the paired improvement over it clears the margin with confidence (deltabelief.gate)."""
    return promote_stage(config, version, summary, run, scratch("promote"))
