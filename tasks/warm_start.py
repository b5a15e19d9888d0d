"""Stage 3: SFT warm start on teacher trajectories (``warm_start_gpu``: the GPU pipeline's, on
``sft.processes`` GPUs, sized at launch)."""

from __future__ import annotations

from flytekit import task
from flytekit.types.directory import FlyteDirectory

from deltabelief.config import Config
from deltabelief.pipeline import RunContext, warm_start_stage
from images import cpu_image, gpu_image
from tasks.common import scratch
from tasks.resources import CPU_MODEL, gpu_pod
from tasks.synthesize import Datasets


@task(container_image=cpu_image, requests=CPU_MODEL, limits=CPU_MODEL)
def warm_start(config: Config, datasets: Datasets, run: RunContext) -> FlyteDirectory:
    return _warm_start(config, datasets, run)


@task(container_image=gpu_image, requests=gpu_pod(1), limits=gpu_pod(1))
def warm_start_gpu(config: Config, datasets: Datasets, run: RunContext) -> FlyteDirectory:
    return _warm_start(config, datasets, run)


def _warm_start(config: Config, datasets: Datasets, run: RunContext) -> FlyteDirectory:
    model_dir = warm_start_stage(config, datasets.trajectories.download(), scratch("sft"), run)
    return FlyteDirectory(str(model_dir))
