"""Stage 1: targets and teacher trajectories (cached; the validate task records them in MLflow)."""

from __future__ import annotations

from dataclasses import dataclass

from flytekit import task
from flytekit.types.file import FlyteFile

from deltabelief.config import Config
from deltabelief.pipeline import synthesize_data
from images import cpu_image
from tasks.common import CACHE, cached_outputs
from tasks.resources import LIGHT


@dataclass
class Datasets:
    targets: FlyteFile
    trajectories: FlyteFile
    report: FlyteFile
    """synthesis.json: counts, splits, duplicates and the teacher's figures."""


@task(container_image=cpu_image, requests=LIGHT, limits=LIGHT, cache=CACHE)
def synthesize(config: Config) -> Datasets:
    result = synthesize_data(config, cached_outputs("data"))
    if result.trajectories_path is None:
        raise ValueError(
            f"preset {config.name!r} plays no teacher games (data.teacher={config.data.teacher!r}, "
            f"data.source={config.data.source!r}); the warm start needs trajectories"
        )
    return Datasets(targets=FlyteFile(str(result.targets_path)), trajectories=FlyteFile(str(result.trajectories_path)),
                    report=FlyteFile(str(result.report_path)))
