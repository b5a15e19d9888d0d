"""Stage 3: SFT warm start on teacher trajectories."""

from __future__ import annotations

from flytekit import task
from flytekit.types.directory import FlyteDirectory

from deltabelief.config import Config
from deltabelief.pipeline import RunContext, warm_start_stage
from images import cpu_image
from tasks.common import scratch
from tasks.resources import CPU_MODEL
from tasks.synthesize import Datasets


@task(container_image=cpu_image, requests=CPU_MODEL, limits=CPU_MODEL)
def warm_start(config: Config, datasets: Datasets, run: RunContext) -> FlyteDirectory:
    model_dir = warm_start_stage(config, datasets.trajectories.download(), scratch("sft"), run)
    return FlyteDirectory(str(model_dir))
