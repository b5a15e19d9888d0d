"""What changes from night to night: seeds and the draw of training targets, from the kickoff time."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pandas as pd
import pytest

from deltabelief.config import DataConfig, GameConfig, load_config
from deltabelief.synthesis import write_parquet
from deltabelief.data.targets import build_targets
from deltabelief.nightly import draw_training_targets, kickoff_label, kickoff_seed, nightly_config

NIGHT = datetime(2025, 1, 2, 2, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def targets_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "targets.parquet"
    write_parquet(build_targets(DataConfig(source="kb"), GameConfig()).frame(), path, "targets")
    return path


def test_each_night_gets_its_own_seed_and_a_rerun_the_same():
    assert kickoff_seed(NIGHT) == kickoff_seed(NIGHT.replace(tzinfo=None))  # Flyte may pass naive UTC
    assert kickoff_seed(NIGHT) != kickoff_seed(NIGHT + timedelta(days=1))
    assert kickoff_label(NIGHT.astimezone(timezone(timedelta(hours=2)))) == "2025-01-02T02:00:00+00:00"
    config = nightly_config(load_config("tiny"), NIGHT)
    assert config.train.seed == kickoff_seed(NIGHT)
    assert config.data == load_config("tiny").data and config.eval == load_config("tiny").eval  # same held-out suite


def test_the_draw_takes_only_train_targets_fresh_each_night(targets_file, tmp_path):
    frame = pd.read_parquet(targets_file)
    train_ids = set(frame.loc[frame["split"] == "train", "id"])
    assert 10 < len(train_ids) < len(frame)

    def draw(night, name):
        path = draw_training_targets(targets_file, 10, kickoff_seed(night), tmp_path / name)
        return set(pd.read_parquet(path)["id"])

    first, again, second = draw(NIGHT, "a.parquet"), draw(NIGHT, "b.parquet"), draw(NIGHT + timedelta(days=1), "c.parquet")
    assert len(first) == 10 and first <= train_ids
    assert first == again and first != second
    everything = draw_training_targets(targets_file, 10_000, 0, tmp_path / "all.parquet")
    assert set(pd.read_parquet(everything)["id"]) == train_ids


def test_a_targets_file_without_train_targets_is_refused(targets_file, tmp_path):
    frame = pd.read_parquet(targets_file)
    held_out = tmp_path / "held_out.parquet"
    write_parquet(frame[frame["split"] != "train"], held_out, "targets")
    with pytest.raises(ValueError, match="no train targets"):
        draw_training_targets(held_out, 4, 0, tmp_path / "out.parquet")


def test_with_no_champion_yet_the_night_starts_from_a_fresh_warm_start(tmp_path, monkeypatch):
    import mlflow

    from deltabelief.pipeline import start_pipeline, starting_model_stage
    from deltabelief.synthesis import synthesize
    from deltabelief.tracking import PARENT_VERSION, START_WEIGHTS

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    config = nightly_config(load_config("tiny", ["sft.epochs=1"]), NIGHT)
    data = synthesize(config.data, config.game, tmp_path / "data")
    ctx = start_pipeline(config)
    model = starting_model_stage(config, data.trajectories_path, tmp_path / "start", ctx)

    assert (model / "config.json").is_file()
    client = mlflow.tracking.MlflowClient(uri)
    stages = [r.data.tags["deltabelief.stage"] for r in client.search_runs(
        [client.get_experiment_by_name("deltabelief").experiment_id], f"tags.mlflow.parentRunId = '{ctx.parent_run_id}'")]
    assert stages == ["warm_start"]
    tags = client.get_run(ctx.parent_run_id).data.tags
    assert PARENT_VERSION not in tags and START_WEIGHTS not in tags
