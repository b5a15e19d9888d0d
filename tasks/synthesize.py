"""Stage 1: targets and teacher trajectories."""

from __future__ import annotations

from dataclasses import dataclass

from flytekit import task
from flytekit.types.file import FlyteFile

from deltabelief.config import Config
from deltabelief.pipeline import RunContext, synthesize_stage
from images import cpu_image
from tasks.common import CACHE, scratch
from tasks.resources import LIGHT


@dataclass
class Datasets:
    targets: FlyteFile
    trajectories: FlyteFile


@task(container_image=cpu_image, requests=LIGHT, limits=LIGHT, cache=CACHE)
def synthesize(config: Config, run: RunContext) -> Datasets:
    targets, trajectories = synthesize_stage(config, scratch("data"), run)
    if trajectories is None:
        raise ValueError(
            f"preset {config.name!r} plays no teacher games (data.teacher={config.data.teacher!r}, "
            f"data.source={config.data.source!r}); the warm start needs trajectories"
        )
    return Datasets(targets=FlyteFile(str(targets)), trajectories=FlyteFile(str(trajectories)))
