"""Stage 6: in-distribution and out-of-distribution evaluation."""

from __future__ import annotations

from flytekit import task
from flytekit.types.directory import FlyteDirectory

from deltabelief.config import Config
from deltabelief.pipeline import EvalSummary, RunContext, evaluate_stage
from images import cpu_image
from tasks.common import scratch
from tasks.resources import CPU_MODEL


@task(container_image=cpu_image, requests=CPU_MODEL, limits=CPU_MODEL)
def evaluate(config: Config, model: FlyteDirectory, run: RunContext) -> EvalSummary:
    return evaluate_stage(config, model.download(), scratch("eval"), run)
