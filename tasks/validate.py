"""Stage 2: data contracts. A broken dataset fails here, before any model work."""

from __future__ import annotations

from pathlib import Path

from flytekit import task
from flytekit.types.file import FlyteFile

from deltabelief.pipeline import RunContext, record_synthesis, validate_stage
from images import cpu_image
from tasks.resources import LIGHT
from tasks.synthesize import Datasets


# Not cached: it runs in seconds, and every execution must record its data lineage in MLflow,
# including one whose datasets came from the synthesize task's cache.
@task(container_image=cpu_image, requests=LIGHT, limits=LIGHT)
def validate(datasets: Datasets, run: RunContext) -> Datasets:
    """Record the datasets (MLflow stage 'synthesize'), then check targets and trajectories
    against their contracts; pass them on unchanged."""
    targets, trajectories = datasets.targets.download(), datasets.trajectories.download()
    record_synthesis(Path(targets), Path(trajectories), Path(datasets.report.download()), run)
    validate_stage("targets", Path(targets), run)
    validate_stage("trajectories", Path(trajectories), run)
    return datasets


@task(container_image=cpu_image, requests=LIGHT, limits=LIGHT)
def validate_file(kind: str, data: FlyteFile, run: RunContext) -> FlyteFile:
    """Check any dataset file against the contract of ``kind``; returns the validation report."""
    return FlyteFile(str(validate_stage(kind, data.download(), run)))
