"""MLflow tracking and gated promotion, on a throwaway sqlite store."""

from __future__ import annotations

import threading
import time

import mlflow
import pytest

import deltabelief.tracking as tracking_module
from deltabelief.config import TrackingConfig, load_config
from deltabelief.promotion_lock import lock_name, promotion_lock
from deltabelief.tracking import (
    CHALLENGER,
    CHAMPION,
    Tracker,
    champion_version,
    promote,
    record_target_scores,
    register_model,
    resolve_tracking_uri,
    stored_target_scores,
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


def test_nested_runs_params_metrics_while_a_run_is_active(tracking, monkeypatch):
    # set_experiment below sets a process-wide active experiment; undo it after the test, or a
    # later test's mlflow.start_run(run_id=...) in another store fails on the mismatch.
    monkeypatch.setattr(mlflow.tracking.fluent, "_active_experiment_id", None)
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


def _scores(*values: float) -> dict[str, float]:
    """Per-target scores on targets t0, t1, ... (16 targets, the values repeated)."""
    return {f"t{i}": values[i % len(values)] for i in range(16)}


def test_first_candidate_becomes_champion(tracking, tmp_path):
    version = _new_version(tracking, tmp_path)
    uri = tracking.tracking_uri
    decision = promote(uri, "policy", version, gate_metric="success", candidate_scores=_scores(0.25, 0.5),
                       suite_signature=SUITE)
    assert decision.promoted and decision.reason == "no champion yet"
    assert str(champion_version(uri, "policy").version) == version
    assert stored_target_scores(uri, "policy", version, gate_metric="success", suite_signature=SUITE) == _scores(0.25, 0.5)


def test_worse_candidate_stays_challenger_and_better_one_takes_champion(tracking, tmp_path):
    uri = tracking.tracking_uri
    first = _new_version(tracking, tmp_path)
    promote(uri, "policy", first, gate_metric="success", candidate_scores=_scores(0.5), suite_signature=SUITE,
            margin=0.05)

    # +0.0625 on average, but only on every fourth target: its lower bound does not clear the margin.
    noisy = _new_version(tracking, tmp_path)
    decision = promote(uri, "policy", noisy, gate_metric="success", candidate_scores=_scores(0.75, 0.5, 0.5, 0.5),
                       suite_signature=SUITE, margin=0.05)
    assert not decision.promoted and decision.improvement == pytest.approx(0.0625)
    assert decision.lower_bound <= 0.05 and decision.level == 0.95 and decision.num_targets == 16
    client = mlflow.tracking.MlflowClient(uri, registry_uri=uri)
    assert str(client.get_model_version_by_alias("policy", CHAMPION).version) == first
    assert str(client.get_model_version_by_alias("policy", CHALLENGER).version) == noisy
    tags = client.get_model_version("policy", noisy).tags
    assert tags["promotion.promoted"] == "false" and tags["promotion.champion_score"] == "0.5"
    assert float(tags["promotion.lower_bound"]) == pytest.approx(decision.lower_bound)

    better = _new_version(tracking, tmp_path)
    decision = promote(uri, "policy", better, gate_metric="success", candidate_scores=_scores(0.75, 0.75, 0.5),
                       suite_signature=SUITE, margin=0.05)
    assert decision.promoted and decision.champion_version == first and decision.lower_bound > 0.05
    assert str(client.get_model_version_by_alias("policy", CHAMPION).version) == better


def test_champion_scored_on_another_suite_must_be_reevaluated(tracking, tmp_path):
    uri = tracking.tracking_uri
    first = _new_version(tracking, tmp_path)
    promote(uri, "policy", first, gate_metric="success", candidate_scores=_scores(0.5), suite_signature="other-suite")
    second = _new_version(tracking, tmp_path)
    with pytest.raises(ValueError, match="re-evaluate"):
        promote(uri, "policy", second, gate_metric="success", candidate_scores=_scores(0.9), suite_signature=SUITE)
    record_target_scores(uri, "policy", first, gate_metric="success", suite_signature=SUITE, scores=_scores(0.4))
    decision = promote(uri, "policy", second, gate_metric="success", candidate_scores=_scores(0.9), suite_signature=SUITE)
    assert decision.promoted and decision.champion_score == pytest.approx(0.4)


@pytest.mark.parametrize("store", ["sqlite", "server"])
def test_two_promotions_at_once_leave_one_champion_the_better_one(store, tracking, tmp_path, monkeypatch, request):
    """Both pipelines reach promotion together. Reading the champion is slowed so that, without
    the lock, both would read 'no champion' and the worse one, writing last, would keep the alias."""
    if store == "server":
        tracking = TrackingConfig(tracking_uri=request.getfixturevalue("mlflow_server"), experiment="race")
    uri, name = tracking.tracking_uri, f"race-{store}-{tmp_path.name}"
    versions = {"worse": _new_version(tracking, tmp_path, name), "better": _new_version(tracking, tmp_path, name)}
    scores = {"worse": _scores(0.25), "better": _scores(0.75)}
    read_delay = {"worse": 1.0, "better": 0.1}
    read_champion = tracking_module.champion_version

    def slow_read(uri_, name_):
        current = read_champion(uri_, name_)
        time.sleep(read_delay[threading.current_thread().name])
        return current

    monkeypatch.setattr(tracking_module, "champion_version", slow_read)
    start, decisions, errors = threading.Barrier(2), {}, []

    def pipeline(which):
        start.wait()
        try:
            decisions[which] = promote(uri, name, versions[which], gate_metric="success",
                                       candidate_scores=scores[which], suite_signature=SUITE)
        except BaseException as err:  # re-raised below, in the test's thread
            errors.append(err)

    threads = [threading.Thread(target=pipeline, args=(w,), name=w) for w in versions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    client = mlflow.tracking.MlflowClient(uri, registry_uri=uri)
    assert str(client.get_model_version_by_alias(name, CHAMPION).version) == versions["better"]
    # One decided first (against no champion), the other against the first's result.
    first, second = sorted(decisions.values(), key=lambda d: d.champion_version is not None)
    assert first.champion_version is None and second.champion_version == first.version
    for which, version in versions.items():
        assert client.get_model_version(name, version).tags["promotion.promoted"] == str(decisions[which].promoted).lower()
    assert lock_name(name) not in {m.name for m in client.search_registered_models()}


def test_a_promotion_waits_for_the_lock_then_fails_naming_its_holder(tracking, tmp_path):
    uri = tracking.tracking_uri
    version = _new_version(tracking, tmp_path)
    client = mlflow.tracking.MlflowClient(uri, registry_uri=uri)
    with promotion_lock(client, "policy", holder="a pipeline that died", timeout=5):
        with pytest.raises(TimeoutError, match="held by a pipeline that died.*delete the registered model"):
            promote(uri, "policy", version, gate_metric="success", candidate_scores=_scores(0.5),
                    suite_signature=SUITE, lock_timeout=0.5)
    assert champion_version(uri, "policy") is None
