"""Stage 2: data contracts. A broken dataset fails here, before any model work."""

from __future__ import annotations

from flytekit import task
from flytekit.types.file import FlyteFile

from deltabelief.pipeline import RunContext, validate_stage
from images import cpu_image
from tasks.common import CACHE
from tasks.resources import LIGHT
from tasks.synthesize import Datasets


@task(container_image=cpu_image, requests=LIGHT, limits=LIGHT, cache=CACHE)
def validate(datasets: Datasets, run: RunContext) -> Datasets:
    """Check targets and trajectories against their contracts; pass them on unchanged."""
    validate_stage("targets", datasets.targets.download(), run)
    validate_stage("trajectories", datasets.trajectories.download(), run)
    return datasets


@task(container_image=cpu_image, requests=LIGHT, limits=LIGHT)
def validate_file(kind: str, data: FlyteFile, run: RunContext) -> FlyteFile:
    """Check any dataset file against the contract of ``kind``; returns the validation report."""
    return FlyteFile(str(validate_stage(kind, data.download(), run)))
