"""Stage 4: belief calibration chooses the elicitation template (``calibrate_gpu``: on a GPU)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

from flytekit import task
from flytekit.types.directory import FlyteDirectory

from deltabelief.config import Config
from deltabelief.pipeline import RunContext, calibrate_stage
from images import cpu_image, gpu_image
from tasks.common import scratch
from tasks.resources import CPU_MODEL, gpu_pod
from tasks.synthesize import Datasets


@dataclass
class Calibration:
    template: str
    excluded_targets: List[str] = field(default_factory=list)


@task(container_image=cpu_image, requests=CPU_MODEL, limits=CPU_MODEL)
def calibrate(config: Config, model: FlyteDirectory, datasets: Datasets, run: RunContext) -> Calibration:
    return _calibrate(config, model, datasets, run)


@task(container_image=gpu_image, requests=gpu_pod(1), limits=gpu_pod(1))
def calibrate_gpu(config: Config, model: FlyteDirectory, datasets: Datasets, run: RunContext) -> Calibration:
    return _calibrate(config, model, datasets, run)


def _calibrate(config: Config, model: FlyteDirectory, datasets: Datasets, run: RunContext) -> Calibration:
    template, excluded = calibrate_stage(
        config, model.download(), datasets.trajectories.download(), scratch("calibration"), run
    )
    return Calibration(template=template, excluded_targets=excluded)
