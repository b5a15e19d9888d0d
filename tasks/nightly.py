"""Nightly retraining's own stages: kickoff-time seeds, the starting model and a fresh target draw."""

from __future__ import annotations

from datetime import datetime

from flytekit import task
from flytekit.types.directory import FlyteDirectory
from flytekit.types.file import FlyteFile

from deltabelief.config import Config
from deltabelief.nightly import kickoff_label, nightly_config
from deltabelief.pipeline import RunContext, draw_targets_stage, start_pipeline, starting_model_stage
from deltabelief.tracking import KICKOFF_TIME
from images import cpu_image
from tasks.common import scratch
from tasks.resources import CPU_MODEL, LIGHT
from tasks.synthesize import Datasets


@task(container_image=cpu_image, requests=LIGHT, limits=LIGHT)
def retrain_config(config: Config, kickoff_time: datetime) -> Config:
    """The preset with the RL seed drawn from the kickoff time."""
    return nightly_config(config, kickoff_time)


@task(container_image=cpu_image, requests=LIGHT, limits=LIGHT)
def start_nightly_run(config: Config, kickoff_time: datetime) -> RunContext:
    return start_pipeline(config, run_name=f"nightly-{config.name}", tags={KICKOFF_TIME: kickoff_label(kickoff_time)})


@task(container_image=cpu_image, requests=CPU_MODEL, limits=CPU_MODEL)
def starting_model(config: Config, datasets: Datasets, run: RunContext) -> FlyteDirectory:
    """The champion's weights, or a warm start on the teacher games when there is no champion."""
    return FlyteDirectory(str(starting_model_stage(config, datasets.trajectories.download(), scratch("start"), run)))


@task(container_image=cpu_image, requests=LIGHT, limits=LIGHT)
def draw_targets(config: Config, datasets: Datasets, run: RunContext) -> FlyteFile:
    return FlyteFile(str(draw_targets_stage(config, datasets.targets.download(), scratch("nightly") / "targets.parquet", run)))
