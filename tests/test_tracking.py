"""MLflow tracking and gated promotion, on a throwaway sqlite store."""

from __future__ import annotations

import mlflow
import pytest

from deltabelief.config import TrackingConfig, load_config
from deltabelief.tracking import (
    CHALLENGER,
    CHAMPION,
    Tracker,
    champion_version,
    promote,
    register_model,
    resolve_tracking_uri,
)

SUITE = "twenty_questions|k=2|budgets=10"


@pytest.fixture()
def tracking(tmp_path, monkeypatch) -> TrackingConfig:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return TrackingConfig(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="test")


def _new_version(tracking: TrackingConfig, tmp_path, name="policy") -> str:
    tracker = Tracker.start(tracking, "candidate")
    model_dir = tmp_path / f"model-{tracker.run_id}"
    model_dir.mkdir()
    (model_dir / "weights.txt").write_text("w")
    tracker.log_artifact(model_dir, "model")
    tracker.close()
    return register_model(tracker.uri, f"runs:/{tracker.run_id}/model", name)


def test_tracking_uri_order(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert resolve_tracking_uri(TrackingConfig()) == f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///env.db")
    assert resolve_tracking_uri(TrackingConfig()) == "sqlite:///env.db"
    assert resolve_tracking_uri(TrackingConfig(tracking_uri="sqlite:///cfg.db")) == "sqlite:///cfg.db"


def test_nested_runs_params_metrics_while_a_run_is_active(tracking):
    mlflow.set_tracking_uri(tracking.tracking_uri)
    mlflow.set_experiment("someone-elses")
    with mlflow.start_run() as outer:  # as under a Flyte task that already opened a run
        parent = Tracker.start(tracking, "pipeline")
        child = parent.child(tracking, "train")
        child.log_config(load_config(None))
        child.log({"reward/mean": 0.5, "pass@1": 0.25}, step=3)
        child.close()
        parent.close()
    client = mlflow.tracking.MlflowClient(tracking.tracking_uri)
    run = client.get_run(child.run_id)
    assert run.data.tags["mlflow.parentRunId"] == parent.run_id
    assert run.data.params["reward.belief_reward_weight"] == "0.1"
    assert run.data.metrics["reward/mean"] == 0.5
    assert run.data.metrics["pass_at_1"] == 0.25  # '@' is not allowed in MLflow metric names
    assert len(run.data.tags["deltabelief.config_hash"]) == 12
    assert client.get_run(outer.info.run_id).data.metrics == {}  # nothing leaked into the active run


def test_first_candidate_becomes_champion(tracking, tmp_path):
    version = _new_version(tracking, tmp_path)
    uri = tracking.tracking_uri
    decision = promote(uri, "policy", version, gate_metric="success", candidate_score=0.3, suite_signature=SUITE)
    assert decision.promoted and decision.reason == "no champion yet"
    assert str(champion_version(uri, "policy").version) == version


def test_worse_candidate_stays_challenger_and_better_one_takes_champion(tracking, tmp_path):
    uri = tracking.tracking_uri
    first = _new_version(tracking, tmp_path)
    promote(uri, "policy", first, gate_metric="success", candidate_score=0.5, suite_signature=SUITE, margin=0.05)

    worse = _new_version(tracking, tmp_path)
    decision = promote(uri, "policy", worse, gate_metric="success", candidate_score=0.52, suite_signature=SUITE, margin=0.05)
    assert not decision.promoted  # 0.52 does not beat 0.5 by more than the margin
    client = mlflow.tracking.MlflowClient(uri, registry_uri=uri)
    assert str(client.get_model_version_by_alias("policy", CHAMPION).version) == first
    assert str(client.get_model_version_by_alias("policy", CHALLENGER).version) == worse
    tags = client.get_model_version("policy", worse).tags
    assert tags["promotion.promoted"] == "false" and tags["promotion.champion_score"] == "0.5"

    better = _new_version(tracking, tmp_path)
    decision = promote(uri, "policy", better, gate_metric="success", candidate_score=0.6, suite_signature=SUITE, margin=0.05)
    assert decision.promoted and decision.champion_version == first
    assert str(client.get_model_version_by_alias("policy", CHAMPION).version) == better


def test_champion_scored_on_another_suite_must_be_reevaluated(tracking, tmp_path):
    uri = tracking.tracking_uri
    first = _new_version(tracking, tmp_path)
    promote(uri, "policy", first, gate_metric="success", candidate_score=0.5, suite_signature="other-suite")
    second = _new_version(tracking, tmp_path)
    with pytest.raises(ValueError, match="re-evaluate"):
        promote(uri, "policy", second, gate_metric="success", candidate_score=0.9, suite_signature=SUITE)
    decision = promote(
        uri, "policy", second, gate_metric="success", candidate_score=0.9, suite_signature=SUITE, champion_score=0.4
    )
    assert decision.promoted
