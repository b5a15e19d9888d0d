"""Stage 6: in-distribution and out-of-distribution evaluation (``evaluate_gpu``: the model served
by vLLM on the task's GPUs, ``eval.policy_server``)."""

from __future__ import annotations

from flytekit import task
from flytekit.types.directory import FlyteDirectory

from deltabelief.config import Config
from deltabelief.pipeline import EvalSummary, RunContext, evaluate_stage
from images import cpu_image, gpu_image
from tasks.common import scratch
from tasks.resources import CPU_MODEL, gpu_pod


@task(container_image=cpu_image, requests=CPU_MODEL, limits=CPU_MODEL)
def evaluate(config: Config, model: FlyteDirectory, run: RunContext) -> EvalSummary:
    return evaluate_stage(config, model.download(), scratch("eval"), run)


@task(container_image=gpu_image, requests=gpu_pod(1), limits=gpu_pod(1))
def evaluate_gpu(config: Config, model: FlyteDirectory, run: RunContext) -> EvalSummary:
    return evaluate_stage(config, model.download(), scratch("eval"), run)
