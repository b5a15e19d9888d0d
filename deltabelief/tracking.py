"""MLflow tracking: runs, metrics, artifacts, the model registry and gated promotion.

:class:`Tracker` has one small interface (``log``, ``log_dict``, ``log_config``,
``log_artifact``, ``close``) and talks to MLflow through an explicit
``MlflowClient`` and run id, never through the fluent "active run" stack, so it
behaves the same inside a Flyte task, inside a run someone else started, or in
a test. Nested stage runs carry the parent's id in ``mlflow.parentRunId``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from deltabelief.config import Config, TrackingConfig, config_hash, config_to_dict, flatten
from deltabelief.retry import Retryable, with_retries

log = logging.getLogger(__name__)

CHALLENGER = "challenger"
CHAMPION = "champion"
# Lineage tags of a model version (and of the pipeline run that made it).
PARENT_VERSION = "deltabelief.parent_version"
"""The registry version training started from; NO_PARENT after a fresh warm start."""
NO_PARENT = "none"
DATA_VERSION = "deltabelief.data_version"
KICKOFF_TIME = "deltabelief.kickoff_time"
"""The schedule's kickoff time of a nightly retraining (UTC, ISO 8601)."""
WEIGHTS = "deltabelief.weights"
"""A digest of a version's tensors (``nightly.weights_digest``)."""
START_WEIGHTS = "deltabelief.start_weights"
"""On a pipeline run: the digest of the weights its training started from."""
MAX_PARAM_LENGTH = 6000


def resolve_tracking_uri(config: TrackingConfig) -> str:
    """Config first, then ``$MLFLOW_TRACKING_URI``, else a sqlite file in the working directory."""
    if config.tracking_uri:
        return config.tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    from deltabelief.tracking_store import ready_store

    ready_store(uri)  # a new sqlite store gets its schema once, under a lock (concurrent first runs)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _already_exists(err: Exception) -> bool:
    """An MLflow error (sqlite or REST) saying another writer created the thing first."""
    return getattr(err, "error_code", None) == "RESOURCE_ALREADY_EXISTS"


def _experiment_id(client, name: str) -> str:
    """The experiment's id, creating it unless another process already did (or just does)."""
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name)
    except MlflowException as err:
        if not _already_exists(err):
            raise
    return client.get_experiment_by_name(name).experiment_id


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.CalledProcessError) as err:
        log.warning("git commit unknown: %s", err)
        return "unknown"
    return out.stdout.strip()


class Tracker:
    """One MLflow run. ``Tracker.start(...)`` creates it; ``Tracker.attach(uri, run_id)`` reopens it."""

    def __init__(self, uri: str, run_id: str):
        self.uri = uri
        self.run_id = run_id
        self.client = _client(uri)

    @classmethod
    def start(
        cls,
        config: TrackingConfig,
        run_name: str,
        *,
        parent_run_id: str | None = None,
        tags: dict[str, str] | None = None,
    ) -> "Tracker":
        uri = resolve_tracking_uri(config)
        client = _client(uri)
        experiment_id = _experiment_id(client, config.experiment)
        all_tags = dict(tags or {})
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        run = client.create_run(experiment_id, run_name=run_name, tags=all_tags)
        log.info("MLflow run %s (%s) at %s", run_name, run.info.run_id, uri)
        return cls(uri, run.info.run_id)

    @classmethod
    def attach(cls, uri: str, run_id: str) -> "Tracker":
        return cls(uri, run_id)

    def child(self, config: TrackingConfig, stage: str) -> "Tracker":
        """A nested run for one pipeline stage."""
        return Tracker.start(config, stage, parent_run_id=self.run_id, tags={"deltabelief.stage": stage})

    def log(self, metrics: dict[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric
        import time

        now = int(time.time() * 1000)
        batch = [
            Metric(key=k.replace("@", "_at_"), value=float(v), timestamp=now, step=step or 0)
            for k, v in metrics.items()
            if v is not None and not (isinstance(v, float) and math.isnan(v))
        ]
        if batch:
            self.client.log_batch(self.run_id, metrics=batch)

    def log_dict(self, data: dict, artifact_file: str) -> None:
        self.client.log_dict(self.run_id, data, artifact_file)

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:MAX_PARAM_LENGTH]) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow caps a batch at 100 params
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def log_config(self, config: Config) -> None:
        """The full typed config as params, plus its hash and the code version as tags."""
        self.log_params(flatten(config_to_dict(config)))
        self.log_dict(config_to_dict(config), "config.json")
        self.set_tags({"deltabelief.config_hash": config_hash(config), "deltabelief.git_commit": git_commit()})

    def set_tags(self, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, str(value))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def close(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)


def log_transformers_model(tracker: Tracker, model_dir: str | Path, name: str = "policy") -> str:
    """Log a saved transformers model (weights, tokenizer, chat template) as an MLflow model."""
    import mlflow
    import transformers

    from deltabelief.policy.loading import load_causal_lm

    model, tokenizer = load_causal_lm(str(model_dir))
    mlflow.set_tracking_uri(tracker.uri)
    requirements = [f"transformers=={transformers.__version__}", f"torch=={_torch_version()}", "accelerate"]
    with mlflow.start_run(run_id=tracker.run_id, nested=mlflow.active_run() is not None):
        info = mlflow.transformers.log_model(
            transformers_model={"model": model, "tokenizer": tokenizer},
            name=name,
            task="text-generation",
            pip_requirements=requirements,
        )
    return info.model_uri


def _torch_version() -> str:
    import torch

    return torch.__version__.split("+")[0]


# ---------------------------------------------------------------- registry


@dataclass
class PromotionDecision:
    model_name: str
    version: str
    promoted: bool
    gate_metric: str
    candidate_score: float
    champion_version: str | None
    champion_score: float | None
    margin: float
    reason: str
    improvement: float | None = None
    """Mean paired improvement over the champion on the same targets."""
    lower_bound: float | None = None
    """One-sided lower confidence bound on ``improvement``: the interval is [lower_bound, inf)."""
    level: float | None = None
    num_targets: int | None = None


def register_model(
    uri: str, model_uri: str, name: str, tags: dict[str, str] | None = None, run_id: str | None = None
) -> str:
    """Register ``model_uri`` as a new version of ``name`` (made by ``run_id``) and give it 'challenger'."""
    from mlflow.exceptions import MlflowException

    client = _client(uri)
    try:  # create, not check-then-create: two pipelines registering the first version race on the check
        client.create_registered_model(name)
    except MlflowException as err:
        if not _already_exists(err):
            raise
    if run_id is None and model_uri.startswith("runs:/"):
        run_id = model_uri.split("/")[1]
    # A logged model's URI (models:/m-<id>) must come with its id: a tracking server checks the pair.
    model_id = model_uri.removeprefix("models:/") if model_uri.startswith("models:/m-") else None
    version = client.create_model_version(name, model_uri, run_id=run_id, tags=tags or {}, model_id=model_id)
    _move_alias(client, name, CHALLENGER, version.version)
    return str(version.version)


def _move_alias(client, name: str, alias: str, version: str) -> None:
    """Point ``alias`` at ``version``. Two writers moving the same alias at once race on the store's
    unique key (sqlite: 'UNIQUE constraint failed'); the one that loses tries again, and the alias
    ends on the version written last."""
    from mlflow.exceptions import MlflowException

    def attempt() -> None:
        try:
            client.set_registered_model_alias(name, alias, version)
        except MlflowException as err:
            if "UNIQUE constraint failed" in str(err) or _already_exists(err):
                raise Retryable(f"{alias} -> v{version}: {err}") from None
            raise

    with_retries(attempt, attempts=5, backoff_s=0.05, what=f"moving alias {alias!r}")


def champion_version(uri: str, name: str) -> Any | None:
    """The version aliased champion, or None when there is none yet (nor a registered model)."""
    from mlflow.exceptions import MlflowException

    client = _client(uri)
    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException as err:
        # No registered model yet is RESOURCE_DOES_NOT_EXIST (its message does not say so in a
        # sqlite store); a model without the alias gets an error that names the alias.
        if err.error_code == "RESOURCE_DOES_NOT_EXIST" or "alias" in str(err).lower():
            return None
        raise


def _scores_artifact(suite_signature: str) -> str:
    return f"gate/target_scores_{suite_signature}.json"


def _version_run(client, name: str, version: str) -> str:
    run_id = client.get_model_version(name, version).run_id
    if not run_id:
        raise ValueError(f"{name} v{version} records no run; register it with the run that made it")
    return run_id


def record_target_scores(
    uri: str, name: str, version: str, *, gate_metric: str, suite_signature: str, scores: dict[str, float]
) -> None:
    """Keep a version's per-target gate scores on one suite with it (an artifact of its run), so
    later candidates can be paired with it target by target."""
    client = _client(uri)
    record = {"gate_metric": gate_metric, "suite_signature": suite_signature, "scores": scores}
    client.log_dict(_version_run(client, name, version), record, _scores_artifact(suite_signature))


def stored_target_scores(uri: str, name: str, version: str, *, gate_metric: str, suite_signature: str) -> dict[str, float] | None:
    """The per-target gate scores recorded for ``version`` on the suite, or None when there are none."""
    from mlflow.exceptions import MlflowException

    client = _client(uri)
    run_id = _version_run(client, name, version)
    artifact = _scores_artifact(suite_signature)
    folder, _, file = artifact.rpartition("/")
    if file not in {Path(a.path).name for a in client.list_artifacts(run_id, folder)}:
        return None
    try:
        local = client.download_artifacts(run_id, artifact, tempfile.mkdtemp(prefix="gate-scores-"))
    except MlflowException as err:
        raise RuntimeError(f"could not read the gate scores of {name} v{version} ({artifact})") from err
    record = json.loads(Path(local).read_text())
    return record["scores"] if record["gate_metric"] == gate_metric else None


def promote(
    uri: str,
    name: str,
    version: str,
    *,
    gate_metric: str,
    candidate_scores: dict[str, float],
    suite_signature: str,
    margin: float = 0.0,
    level: float = 0.95,
    resamples: int = 2000,
    lock_timeout: float = 600.0,
) -> PromotionDecision:
    """Move 'champion' to ``version`` only if its paired improvement over the champion clears the gate.

    ``candidate_scores`` are the candidate's per-target values of ``gate_metric`` on the suite
    ``suite_signature``; they are stored with the version. The champion's must be stored for the
    same suite (:func:`record_target_scores`), else a ValueError asks to re-evaluate it there.
    The read of the champion, the decision and the alias move happen under the promotion lock,
    so two pipelines promoting at once leave one champion, decided against the other.
    """
    from deltabelief.gate import paired_gate
    from deltabelief.promotion_lock import promotion_lock

    if not candidate_scores:
        raise ValueError(f"no per-target '{gate_metric}' scores for {name} v{version}: nothing to gate on")
    client = _client(uri)
    candidate_score = sum(candidate_scores.values()) / len(candidate_scores)
    record_target_scores(uri, name, version, gate_metric=gate_metric, suite_signature=suite_signature,
                         scores=candidate_scores)
    client.set_model_version_tag(name, version, f"gate.{gate_metric}", str(candidate_score))
    client.set_model_version_tag(name, version, "gate.suite_signature", suite_signature)
    with promotion_lock(client, name, holder=f"{name} v{version}", timeout=lock_timeout):
        current = champion_version(uri, name)
        if current is None:
            decision = PromotionDecision(name, str(version), True, gate_metric, candidate_score, None, None,
                                         margin, "no champion yet")
        else:
            champ = str(current.version)
            champion_scores = stored_target_scores(uri, name, champ, gate_metric=gate_metric,
                                                   suite_signature=suite_signature)
            if champion_scores is None:
                raise ValueError(
                    f"champion v{champ} has no per-target '{gate_metric}' scores on suite {suite_signature}; "
                    "re-evaluate it on the same suite and record them (record_target_scores)"
                )
            gate = paired_gate(candidate_scores, champion_scores, margin=margin, level=level, resamples=resamples)
            verdict = "clears" if gate.passed else "does not clear"
            reason = (
                f"paired improvement {gate.improvement:+.4f} over champion v{champ} on {gate.num_targets} targets, "
                f"{level:.0%} lower bound {gate.lower_bound:+.4f}, {verdict} margin {margin}"
            )
            decision = PromotionDecision(
                name, str(version), gate.passed, gate_metric, candidate_score, champ,
                sum(champion_scores.values()) / len(champion_scores), margin, reason,
                gate.improvement, gate.lower_bound, level, gate.num_targets,
            )
        if decision.promoted:
            client.set_registered_model_alias(name, CHAMPION, version)
        for key, value in asdict(decision).items():
            text = value if isinstance(value, str) else json.dumps(value)
            client.set_model_version_tag(name, version, f"promotion.{key}", text)
    log.info("promotion of %s v%s: %s", name, version, decision.reason)
    return decision


def write_json(data: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str))
    return path
