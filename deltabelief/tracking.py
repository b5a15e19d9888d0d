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

log = logging.getLogger(__name__)

CHALLENGER = "challenger"
CHAMPION = "champion"
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

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


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
        experiment = client.get_experiment_by_name(config.experiment)
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(config.experiment)
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


def register_model(uri: str, model_uri: str, name: str, tags: dict[str, str] | None = None) -> str:
    """Register ``model_uri`` as a new version of ``name`` and give it the alias 'challenger'."""
    client = _client(uri)
    try:
        client.get_registered_model(name)
    except Exception as err:  # mlflow raises RestException/MlflowException for a missing model
        if "RESOURCE_DOES_NOT_EXIST" not in str(err) and "not found" not in str(err).lower():
            raise
        client.create_registered_model(name)
    run_id = model_uri.split("/")[1] if model_uri.startswith("runs:/") else None
    version = client.create_model_version(name, model_uri, run_id=run_id, tags=tags or {})
    client.set_registered_model_alias(name, CHALLENGER, version.version)
    return str(version.version)


def champion_version(uri: str, name: str) -> Any | None:
    client = _client(uri)
    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except Exception as err:
        if "alias" in str(err).lower() or "RESOURCE_DOES_NOT_EXIST" in str(err):
            return None
        raise


def promote(
    uri: str,
    name: str,
    version: str,
    *,
    gate_metric: str,
    candidate_score: float,
    suite_signature: str,
    margin: float = 0.0,
    champion_score: float | None = None,
) -> PromotionDecision:
    """Move 'champion' to ``version`` only if it beats the champion by more than ``margin``.

    The champion's score is read from its version tags unless given; it counts only when it was
    measured on the same evaluation suite (``suite_signature``), else the caller must re-evaluate
    the champion and pass ``champion_score``.
    """
    client = _client(uri)
    current = champion_version(uri, name)
    score_tag, suite_tag = f"gate.{gate_metric}", "gate.suite_signature"
    client.set_model_version_tag(name, version, score_tag, str(candidate_score))
    client.set_model_version_tag(name, version, suite_tag, suite_signature)
    if current is None:
        promoted, reason, champ_score, champ_version = True, "no champion yet", None, None
    else:
        champ_version = str(current.version)
        if champion_score is None:
            if current.tags.get(suite_tag) != suite_signature or score_tag not in current.tags:
                raise ValueError(
                    f"champion v{champ_version} has no '{gate_metric}' score on suite {suite_signature}; "
                    "re-evaluate it on the same suite and pass champion_score"
                )
            champion_score = float(current.tags[score_tag])
        champ_score = champion_score
        promoted = candidate_score > champion_score + margin
        reason = (
            f"candidate {candidate_score:.4f} {'>' if promoted else '<='} champion {champion_score:.4f} + margin {margin}"
        )
    decision = PromotionDecision(
        name, str(version), promoted, gate_metric, candidate_score, champ_version, champ_score, margin, reason
    )
    if promoted:
        client.set_registered_model_alias(name, CHAMPION, version)
    for key, value in asdict(decision).items():
        text = value if isinstance(value, str) else json.dumps(value)
        client.set_model_version_tag(name, version, f"promotion.{key}", text)
    log.info("promotion of %s v%s: %s", name, version, reason)
    return decision


def write_json(data: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str))
    return path


def temp_dir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))
