"""Stage 6b: the warm start evaluated like the trained model, and the paired gain between them."""

from __future__ import annotations

from flytekit import task
from flytekit.types.directory import FlyteDirectory

from deltabelief.config import Config
from deltabelief.pipeline import EvalSummary, RunContext, compare_stage
from images import cpu_image, gpu_image
from tasks.common import scratch
from tasks.resources import CPU_MODEL, gpu_pod


@task(container_image=cpu_image, requests=CPU_MODEL, limits=CPU_MODEL)
def compare_to_warm_start(config: Config, baseline: FlyteDirectory, summary: EvalSummary, run: RunContext) -> dict:
    return compare_stage(config, baseline.download(), summary, scratch("eval_warm_start"), run)


@task(container_image=gpu_image, requests=gpu_pod(1), limits=gpu_pod(1))
def compare_to_warm_start_gpu(config: Config, baseline: FlyteDirectory, summary: EvalSummary,
                              run: RunContext) -> dict:
    return compare_stage(config, baseline.download(), summary, scratch("eval_warm_start"), run)
