"""The Flyte pipeline on the tiny preset, called from pytest (local execution, real local Ray)."""

from __future__ import annotations

import importlib
from datetime import datetime, timezone
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from deltabelief.config import TrackingConfig, load_config
from deltabelief.nightly import kickoff_seed
from deltabelief.summary import describe
from deltabelief.tracking import (
    CHAMPION,
    DATA_VERSION,
    KICKOFF_TIME,
    NO_PARENT,
    PARENT_VERSION,
    START_WEIGHTS,
    WEIGHTS,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_session():
    import ray

    ray.init(num_cpus=1, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture()
def mlflow_uri(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    return uri


def _client(uri):
    return mlflow.tracking.MlflowClient(uri, registry_uri=uri)


# Tests check the stages, not the learning: one SFT epoch and 16 games a step keep them short.
QUICK = ["sft.epochs=1", "train.rollouts_per_target=4"]


def test_the_pipeline_crowns_a_champion_and_the_nightly_plan_continues_from_it(
        ray_session, mlflow_server, tmp_path, monkeypatch):
    """The tiny pipeline end to end, then one night of the nightly plan, against a real
    ``mlflow server`` with proxied artifacts: the night starts from the weights the pipeline
    registered as champion, and the registry shows v1 -> v2. (A night with no champion yet
    warm-starts: tests/test_nightly.py.)"""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("DELTABELIEF_NIGHTLY_PRESET", "configs/tiny.yaml")
    monkeypatch.chdir(tmp_path)
    import workflows.launch_plans as plans
    from workflows.pipeline import delta_belief_pipeline

    # The city suite is played by the trained model only.
    first = delta_belief_pipeline(config="configs/tiny.yaml", num_steps=2, overrides=[
        "eval.suites=[twenty_questions, guess_my_city]", "eval.sources=[guess_my_city=kb]",
        "eval.warm_start_suites=[twenty_questions]", *QUICK])
    assert first["promoted"] and first["reason"] == "no champion yet"

    client = _client(mlflow_server)
    name = load_config("tiny").tracking.registered_model_name
    assert str(client.get_model_version_by_alias(name, CHAMPION).version) == first["version"]
    experiment = client.get_experiment_by_name("deltabelief")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    stages = {r.data.tags.get("deltabelief.stage") for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert {"synthesize", "validate-targets", "validate-trajectories", "warm_start", "calibrate", "train",
            "evaluate", "evaluate_warm_start", "compare_warm_start", "register", "promote"} <= stages
    gain = parent.data.metrics  # the trained model against its own warm start, paired over targets
    low, mean, high = (gain[f"twenty_questions/gain_over_warm_start/{k}"] for k in ("ci_low", "mean", "ci_high"))
    assert low <= mean <= high
    assert mean == pytest.approx(gain["twenty_questions/trained/success_mean"] - gain["twenty_questions/warm_start/success_mean"])
    played = {r.data.tags.get("deltabelief.stage"): r.data.metrics for r in runs}
    assert "guess_my_city/success_mean" in played["evaluate"]
    assert not any(k.startswith("guess_my_city/") for k in {**played["evaluate_warm_start"], **gain})
    for tag in ("deltabelief.git_commit", "deltabelief.config_hash", "deltabelief.data_version"):
        assert parent.data.tags.get(tag), tag

    plans = importlib.reload(plans)  # the plan fixes its preset when the module is imported
    assert plans.nightly_retrain.schedule.kickoff_time_input_arg == "kickoff_time"
    assert plans.nightly_retrain.fixed_inputs.literals["config"].scalar.primitive.string_value == "configs/tiny.yaml"
    kickoff = datetime(2025, 1, 2, 2, tzinfo=timezone.utc)
    second = plans.nightly_retrain(kickoff_time=kickoff, num_steps=2, overrides=QUICK)

    v1, v2 = (client.get_model_version(name, d["version"]) for d in (first, second))
    assert v1.tags[PARENT_VERSION] == NO_PARENT and v2.tags[PARENT_VERSION] == v1.version
    assert v2.tags[KICKOFF_TIME] == "2025-01-02T02:00:00+00:00"
    assert v1.tags[DATA_VERSION] and v2.tags[DATA_VERSION]
    # The night trained from exactly the weights registered as v1, with the kickoff's seed.
    night = client.get_run(v2.tags["deltabelief.pipeline_run"])
    assert night.data.tags[START_WEIGHTS] == v1.tags[WEIGHTS]
    assert v2.tags[WEIGHTS] != v1.tags[WEIGHTS]
    night_runs = client.search_runs([night.info.experiment_id], f"tags.mlflow.parentRunId = '{night.info.run_id}'")
    by_stage = {r.data.tags["deltabelief.stage"]: r for r in night_runs}
    assert "start-from-champion" in by_stage and "warm_start" not in by_stage
    assert by_stage["train"].data.params["train.seed"] == str(kickoff_seed(kickoff))
    # The gate paired v2 with v1 on the same held-out targets and recorded its interval.
    assert second["champion_version"] == v1.version and second["num_targets"] == load_config("tiny").eval.num_targets
    assert second["lower_bound"] <= second["improvement"]
    # Artifacts went through the server (proxied), not to this machine's working directory.
    assert client.get_run(v1.run_id).info.artifact_uri.startswith("mlflow-artifacts:")
    assert not any(tmp_path.glob("ml*"))
    loaded = mlflow.transformers.load_model(f"models:/{name}@{CHAMPION}", return_type="components")
    assert loaded["tokenizer"].chat_template
    shown = describe(TrackingConfig())
    assert f"challenger lineage: v{v1.version} -> v{v2.version}" in shown


def test_broken_dataset_stops_before_warm_start(ray_session, mlflow_uri, monkeypatch):
    from deltabelief import synthesis
    from workflows.pipeline import delta_belief_pipeline

    real = synthesis.synthesize

    def plant_fault(data, game, out_dir):
        result = real(data, game, out_dir)
        frame = pd.read_parquet(result.targets_path)
        frame.loc[1, "id"] = frame.loc[0, "id"]  # a duplicate id breaks the targets contract
        frame.to_parquet(result.targets_path)
        return result

    monkeypatch.setattr(synthesis, "synthesize", plant_fault)
    with pytest.raises(Exception, match="id"):
        delta_belief_pipeline(config="configs/tiny.yaml")
    client = _client(mlflow_uri)
    assert client.search_registered_models() == []
    runs = client.search_runs([client.get_experiment_by_name("deltabelief").experiment_id])
    stages = {r.data.tags.get("deltabelief.stage") for r in runs}
    assert "warm_start" not in stages
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    assert parent.info.status == "FAILED" and parent.data.tags["deltabelief.failed_stage"] == "validate-targets"


def test_validate_records_the_data_lineage_even_when_synthesis_came_from_the_cache(tmp_path, mlflow_uri):
    """On a Flyte cache hit the synthesize task does not run; the validate task still records the
    'synthesize' stage run and tags the execution with the data version."""
    from flytekit.types.file import FlyteFile

    from deltabelief.pipeline import file_digest, finish_pipeline, start_pipeline, synthesize_data
    from tasks.synthesize import Datasets
    from tasks.validate import validate

    config = load_config("tiny")
    result = synthesize_data(config, tmp_path / "data")  # as the cached task left it
    ctx = start_pipeline(config)
    validate(datasets=Datasets(FlyteFile(str(result.targets_path)), FlyteFile(str(result.trajectories_path)),
                               FlyteFile(str(result.report_path))), run=ctx)
    finish_pipeline(ctx)
    client = _client(mlflow_uri)
    runs = client.search_runs([client.get_experiment_by_name("deltabelief").experiment_id])
    by_stage = {r.data.tags.get("deltabelief.stage"): r for r in runs}
    assert {"synthesize", "validate-targets", "validate-trajectories"} <= set(by_stage)
    version = file_digest(result.targets_path)
    assert by_stage["synthesize"].data.tags["deltabelief.data_version"] == version
    assert client.get_run(ctx.parent_run_id).data.tags["deltabelief.data_version"] == version
    logged = {a.path for a in client.list_artifacts(by_stage["synthesize"].info.run_id, "data")}
    assert logged == {"data/synthesis.json", "data/targets.parquet", "data/trajectories.parquet"}


def test_a_local_cache_hit_still_finds_its_files_after_the_temporary_directory_is_cleaned(tmp_path, monkeypatch):
    """Flyte's local cache outlives the temporary working directory a local run writes in: a
    cached synthesis must return files that are still there once that directory is gone (as
    after a reboot), not paths that make the next task fail on its inputs."""
    import shutil

    from flytekit.core import local_cache
    from flytekit.core.context_manager import FlyteContextManager

    import tasks.common
    from tasks.synthesize import synthesize

    monkeypatch.setenv("FLYTE_LOCAL_CACHE_ENABLED", "true")
    monkeypatch.setattr(local_cache, "CACHE_LOCATION", str(tmp_path / "local-cache"))
    monkeypatch.setattr(local_cache.LocalTaskCache, "_initialized", False)
    monkeypatch.setattr(tasks.common, "LOCAL_CACHED_FILES", tmp_path / "cached-files")
    config = load_config("tiny")
    sandbox = Path(FlyteContextManager.current_context().user_space_params.working_directory).parent
    before = set(sandbox.iterdir())
    first = synthesize(config=config)
    created = set(sandbox.iterdir()) - before
    assert created, "the task made no temporary working directory: this test no longer tests anything"
    for path in created:  # what cleaning /tmp does to the run's working directory
        shutil.rmtree(path)
    second = synthesize(config=config)  # a cache hit: the task does not run again
    assert second.targets.path == first.targets.path
    assert len(pd.read_parquet(second.targets.download())) == len(pd.read_parquet(first.targets.download()))


def test_with_the_local_cache_off_a_synthesis_leaves_nothing_beside_it(tmp_path, monkeypatch):
    import tasks.common
    from tasks.synthesize import synthesize

    monkeypatch.setenv("FLYTE_LOCAL_CACHE_ENABLED", "false")
    monkeypatch.setattr(tasks.common, "LOCAL_CACHED_FILES", tmp_path / "cached-files")
    datasets = synthesize(config=load_config("tiny"))
    assert len(pd.read_parquet(datasets.targets.download())) > 0
    assert not (tmp_path / "cached-files").exists()


def test_a_failing_stage_closes_the_pipeline_run_as_failed(mlflow_uri):
    """Any stage that raises ends the execution: its run and the parent are FAILED, the parent
    names the stage, and the error reaches the caller unchanged."""
    from deltabelief.pipeline import _run_stage, start_pipeline

    ctx = start_pipeline(load_config("tiny"))

    def body(tracker):
        raise RuntimeError("out of memory in the update")

    with pytest.raises(RuntimeError, match="out of memory"):
        _run_stage(ctx, "train", body)
    client = _client(mlflow_uri)
    parent = client.get_run(ctx.parent_run_id)
    assert parent.info.status == "FAILED" and parent.data.tags["deltabelief.failed_stage"] == "train"
    (stage,) = [r for r in client.search_runs([parent.info.experiment_id])
                if r.data.tags.get("mlflow.parentRunId") == ctx.parent_run_id]
    assert stage.info.status == "FAILED"
