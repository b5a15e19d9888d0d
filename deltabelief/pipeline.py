"""The pipeline's stages as plain functions: one job each, tracked in MLflow.

Each stage opens a nested MLflow run under the pipeline's parent run, calls the
library, logs what it made and returns plain paths and values. The Flyte tasks
in ``tasks/`` are thin wrappers around these; the workflows in ``workflows/`` chain them.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

from deltabelief.config import Config, TrackingConfig, config_hash, override
from deltabelief.nightly import draw_training_targets, weights_digest
from deltabelief.tracking import (
    DATA_VERSION,
    KICKOFF_TIME,
    NO_PARENT,
    PARENT_VERSION,
    START_WEIGHTS,
    WEIGHTS,
    Tracker,
    log_transformers_model,
    register_model,
    resolve_tracking_uri,
)

log = logging.getLogger(__name__)


@dataclass
class RunContext:
    """Where the pipeline's parent MLflow run lives (passed from stage to stage)."""

    tracking_uri: str = ""
    parent_run_id: str = ""
    experiment: str = "deltabelief"

    def tracking(self) -> TrackingConfig:
        return TrackingConfig(tracking_uri=self.tracking_uri, experiment=self.experiment)

    def stage(self, name: str) -> Tracker:
        parent = Tracker.attach(self.tracking_uri, self.parent_run_id)
        return parent.child(self.tracking(), name)

    def parent(self) -> Tracker:
        return Tracker.attach(self.tracking_uri, self.parent_run_id)


@dataclass
class EvalSummary:
    metrics: dict[str, float] = field(default_factory=dict)
    report_dir: str = ""
    suite_signature: str = ""
    target_scores: dict[str, float] = field(default_factory=dict)
    """Per-target values of the gate metric (empty when its suite was not evaluated); the gate pairs them."""


def file_digest(path: str | Path) -> str:
    """The data version: a short content hash of a dataset file."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]


def suite_signature(config: Config) -> str:
    """Which evaluation a score belongs to: the same signature means comparable scores."""
    ev = config.eval
    parts = {
        "suites": ev.suites, "k": ev.k, "budgets": ev.budgets, "num_targets": ev.num_targets,
        "sources": ev.sources, "seed": ev.seed, "judge": ev.judge.backend, "judge_model": ev.judge.model,
        "data": [config.data.source, config.data.seed, config.data.split], "kb_nouns": config.game.kb_nouns,
    }
    if config.game.candidates_in_prompt:  # another prompt is another evaluation; older signatures stay as they were
        parts["candidates_in_prompt"] = True
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12]


def _run_stage(ctx: RunContext, name: str, body):
    """Run ``body(tracker)`` inside a nested stage run. When the body raises, the stage run and
    the pipeline's parent run are closed FAILED (a failed stage ends the Flyte execution, and
    nothing else would close the parent) and the parent is tagged with the stage's name."""
    tracker = ctx.stage(name)
    try:
        result = body(tracker)
    except BaseException:
        tracker.close("FAILED")
        ctx.parent().set_tags({"deltabelief.failed_stage": name})
        finish_pipeline(ctx, "FAILED")
        raise
    tracker.close()
    return result


# ---------------------------------------------------------------- stages


def start_pipeline(config: Config, run_name: str = "pipeline", tags: dict[str, str] | None = None) -> RunContext:
    """Open the parent run and record the config, its hash, the code version and ``tags``."""
    tracker = Tracker.start(config.tracking, run_name, tags={"deltabelief.preset": config.name, **(tags or {})})
    tracker.log_config(config)
    return RunContext(resolve_tracking_uri(config.tracking), tracker.run_id, config.tracking.experiment)


def finish_pipeline(ctx: RunContext, status: str = "FINISHED") -> None:
    ctx.parent().close(status)


def synthesize_data(config: Config, out_dir: Path):
    """Targets and teacher trajectories in ``out_dir`` (a :class:`SynthesisResult`), untracked:
    deterministic in the config, so the Flyte task that runs it can be cached."""
    from deltabelief import synthesis

    return synthesis.synthesize(config.data, config.game, out_dir)


def record_synthesis(targets: Path, trajectories: Path | None, report: Path, ctx: RunContext) -> None:
    """The ``synthesize`` stage run: the synthesis report, the datasets and their version
    (also tagged on the parent run). Kept apart from :func:`synthesize_data` so an execution
    that takes the data from Flyte's cache still records where its data came from."""

    def body(tracker: Tracker):
        tags = {DATA_VERSION: file_digest(targets), "deltabelief.data_uri": str(targets)}
        tracker.log_artifact(report, "data")
        tracker.log_artifact(targets, "data")
        if trajectories:
            tracker.log_artifact(trajectories, "data")
        tracker.set_tags(tags)
        ctx.parent().set_tags(tags)

    _run_stage(ctx, "synthesize", body)


def validate_stage(kind: str, path: Path, ctx: RunContext) -> Path:
    """Check a dataset against its contract; on failure the contract's report is logged and,
    as for any stage, the pipeline's parent run is marked FAILED."""
    from deltabelief.data.contracts import ContractError, report_path_for, validate_dataset

    def body(tracker: Tracker):
        try:
            validate_dataset(kind, path)
        except ContractError as err:
            tracker.log_dict(err.report, f"contract_{kind}.json")
            raise
        report = report_path_for(path)
        tracker.log_artifact(report, "contracts")
        return report

    return _run_stage(ctx, f"validate-{kind}", body)


def warm_start_stage(config: Config, trajectories: Path, out_dir: Path, ctx: RunContext) -> Path:
    """The SFT warm start, in this process or data-parallel on ``sft.processes`` devices (torchrun)."""
    from deltabelief.training.sft import warm_start
    from deltabelief.training.sft_distributed import launch_warm_start

    def body(tracker: Tracker):
        tracker.log_config(config)
        run = launch_warm_start if config.sft.processes > 1 else warm_start
        return run(config, trajectories, out_dir, log_fn=lambda m, step: tracker.log(m, step))

    return _run_stage(ctx, "warm_start", body)


def starting_model_stage(config: Config, trajectories: Path, out_dir: Path, ctx: RunContext) -> Path:
    """The model a retraining continues from: the registry's champion, else a fresh warm start.

    Starting from the champion tags the stage run and the pipeline run with its version
    (``deltabelief.parent_version``, copied onto the version this run registers) and the
    digest of the weights it starts from (``deltabelief.start_weights``).
    """
    from deltabelief.tracking import champion_version

    champion = champion_version(ctx.tracking_uri, config.tracking.registered_model_name)
    if champion is None:
        return warm_start_stage(config, trajectories, out_dir / "warm_start", ctx)

    def body(tracker: Tracker):
        model_dir = _download_model(ctx.tracking_uri, champion.source, out_dir / "champion")
        tags = {PARENT_VERSION: str(champion.version), START_WEIGHTS: weights_digest(model_dir)}
        tracker.set_tags(tags)
        ctx.parent().set_tags(tags)
        return model_dir

    return _run_stage(ctx, "start-from-champion", body)


def draw_targets_stage(config: Config, targets: Path, out_path: Path, ctx: RunContext) -> Path:
    """A fresh draw of training targets (as many as the run's steps visit), seeded by
    ``train.seed``; its digest becomes the run's data version."""

    def body(tracker: Tracker):
        count = config.train.num_steps * config.train.targets_per_step
        drawn = draw_training_targets(targets, count, config.train.seed, out_path)
        tags = {DATA_VERSION: file_digest(drawn), "deltabelief.data_uri": str(drawn)}
        tracker.log_artifact(drawn, "data")
        tracker.set_tags(tags)
        ctx.parent().set_tags(tags)
        return drawn

    return _run_stage(ctx, "draw-targets", body)


def calibrate_stage(config: Config, model_dir: Path, trajectories: Path, out_dir: Path, ctx: RunContext) -> tuple[str, list[str]]:
    """Returns the chosen elicitation template and the ids of targets to exclude from training."""
    from deltabelief.calibration import calibrate, excluded_target_ids

    def body(tracker: Tracker):
        report = calibrate(override(config, {"policy.model": str(model_dir)}), trajectories, out_dir)
        tracker.log_artifact(out_dir, "calibration")
        # Templates are free text, not valid metric names: metrics number them, tags hold the text.
        tracker.log(report.metrics())
        tracker.set_tags({f"calibration.template_{i}": template for i, template in enumerate(report.templates)})
        tracker.set_tags({"calibration.chosen_template": report.chosen_template})
        return report.chosen_template, sorted(excluded_target_ids(report))

    return _run_stage(ctx, "calibrate", body)


def train_stage(
    config: Config, model_dir: Path, targets: Path, template: str, excluded: list[str], out_dir: Path, ctx: RunContext
) -> Path:
    from deltabelief.data.targets import read_targets

    def body(tracker: Tracker):
        run_config = override(config, {"policy.model": str(model_dir), "belief.template": template})
        tracker.log_config(run_config)
        train_targets = [t for t in read_targets(targets, split="train") if t.id not in set(excluded)]
        if config.train.backend == "verl":
            from deltabelief.integrations.verl.runner import run_verl

            result = run_verl(run_config, targets, out_dir, exclude_ids=excluded)
            return Path(result["model_dir"])
        from deltabelief.training.rl import run_rl

        result = run_rl(run_config, train_targets, out_dir, log_fn=lambda m, step: tracker.log(m, step))
        samples = Path(out_dir) / "samples"
        if samples.exists():
            tracker.log_artifact(samples, "rollout_samples")
        return result.model_dir

    return _run_stage(ctx, "train", body)


def train_stage_with_threads(num_threads: int, *args) -> Path:
    """``train_stage`` with torch on ``num_threads`` threads, for a Ray task: a Ray worker starts
    with OMP_NUM_THREADS=1 and may be reused, so its torch would otherwise train on one thread."""
    import torch

    torch.set_num_threads(num_threads)
    return train_stage(*args)


def evaluate_stage(config: Config, model_dir: Path, out_dir: Path, ctx: RunContext, stage: str = "evaluate") -> EvalSummary:
    import pandas as pd

    from deltabelief.gate import target_scores
    from deltabelief.serving.policy_server import evaluate_saved_model

    def body(tracker: Tracker):
        result = evaluate_saved_model(config, model_dir, out_dir)
        tracker.log(result.metrics)
        tracker.log_artifact(result.out_dir, "evaluation")
        signature = suite_signature(config)
        tracker.set_tags({"eval.suite_signature": signature})
        gate = config.tracking.gate_metric
        scores = target_scores(pd.read_parquet(result.per_target_path), gate) if gate in result.metrics else {}
        return EvalSummary(dict(result.metrics), str(result.out_dir), signature, scores)

    return _run_stage(ctx, stage, body)


def compare_stage(config: Config, baseline_dir: Path, summary: EvalSummary, out_dir: Path, ctx: RunContext) -> dict:
    """Evaluate ``baseline_dir`` (the warm start) like the candidate and log the paired gain.

    For every success suite of ``eval.warm_start_suites`` (default: all), at its largest budget:
    ``{suite}/gain_over_warm_start/mean``, ``ci_low`` and ``ci_high`` (95%, bootstrap over targets,
    ``deltabelief.gate``), on the stage run and the parent run, plus the warm start's own evaluation
    as a stage run.
    """
    import pandas as pd

    from deltabelief.gate import paired_differences, paired_interval, target_scores

    def body(tracker: Tracker):
        # the gain needs outcomes, not beliefs, and only on the suites asked for
        same_games = override(config, {"eval.belief_curves": False,
                                       "eval.suites": config.eval.warm_start_suites or config.eval.suites})
        baseline = evaluate_stage(same_games, baseline_dir, out_dir, ctx, stage="evaluate_warm_start")
        trained = pd.read_parquet(Path(summary.report_dir) / "per_target.parquet")
        warm = pd.read_parquet(Path(baseline.report_dir) / "per_target.parquet")
        gains: dict[str, float] = {}
        for suite in warm.loc[warm["success_rate"].notna(), "suite"].unique():
            metric = f"{suite}/success_mean"
            d = paired_differences(target_scores(trained, metric), target_scores(warm, metric))
            low, high = paired_interval(d, 0.95, config.tracking.gate_resamples, seed=config.eval.seed)
            gains.update({f"{suite}/gain_over_warm_start/mean": float(d.mean()),
                          f"{suite}/gain_over_warm_start/ci_low": low,
                          f"{suite}/gain_over_warm_start/ci_high": high,
                          f"{suite}/warm_start/success_mean": baseline.metrics[metric],
                          f"{suite}/trained/success_mean": summary.metrics[metric]})
        tracker.log(gains)
        ctx.parent().log(gains)
        return gains

    return _run_stage(ctx, "compare_warm_start", body)


def register_stage(config: Config, model_dir: Path, summary: EvalSummary, ctx: RunContext) -> str:
    """Log the policy as an MLflow transformers model and register it with alias 'challenger'."""

    def body(tracker: Tracker):
        model_uri = log_transformers_model(tracker, model_dir)
        parent_tags = ctx.parent().client.get_run(ctx.parent_run_id).data.tags
        tags = {
            "deltabelief.config_hash": config_hash(config),
            "deltabelief.git_commit": parent_tags.get("deltabelief.git_commit", "unknown"),
            DATA_VERSION: parent_tags.get(DATA_VERSION, "unknown"),
            PARENT_VERSION: parent_tags.get(PARENT_VERSION, NO_PARENT),
            WEIGHTS: weights_digest(model_dir),
            "deltabelief.pipeline_run": ctx.parent_run_id,
            "eval.suite_signature": summary.suite_signature,
        }
        if KICKOFF_TIME in parent_tags:
            tags[KICKOFF_TIME] = parent_tags[KICKOFF_TIME]
        version = register_model(ctx.tracking_uri, model_uri, config.tracking.registered_model_name, tags,
                                 run_id=tracker.run_id)
        tracker.set_tags({"registry.version": version, "registry.model_uri": model_uri})
        return version

    return _run_stage(ctx, "register", body)


def promote_stage(config: Config, version: str, summary: EvalSummary, ctx: RunContext, out_dir: Path) -> dict:
    """Move 'champion' to ``version`` if its paired improvement over the champion clears the gate."""
    from deltabelief.tracking import champion_version, promote, record_target_scores, stored_target_scores

    def body(tracker: Tracker):
        gate, tracking = config.tracking.gate_metric, config.tracking
        if gate not in summary.metrics:
            raise KeyError(f"gate metric {gate!r} not in the evaluation metrics {sorted(summary.metrics)}")
        name = tracking.registered_model_name
        champion = champion_version(ctx.tracking_uri, name)
        if champion is not None and stored_target_scores(
            ctx.tracking_uri, name, str(champion.version), gate_metric=gate, suite_signature=summary.suite_signature
        ) is None:
            # No per-target scores on this suite to pair with: re-evaluate the champion here.
            champion_dir = _download_model(ctx.tracking_uri, champion.source, out_dir / "champion_model")
            champion_eval = evaluate_stage(config, champion_dir, out_dir / "champion_eval", ctx, "evaluate-champion")
            record_target_scores(ctx.tracking_uri, name, str(champion.version), gate_metric=gate,
                                 suite_signature=summary.suite_signature, scores=champion_eval.target_scores)
        decision = promote(
            ctx.tracking_uri, name, version, gate_metric=gate, candidate_scores=summary.target_scores,
            suite_signature=summary.suite_signature, margin=tracking.gate_margin, level=tracking.gate_level,
            resamples=tracking.gate_resamples, lock_timeout=tracking.promotion_lock_timeout,
        )
        tracker.log_dict(asdict(decision), "promotion_decision.json")
        ctx.parent().set_tags({"promotion.promoted": str(decision.promoted), "promotion.reason": decision.reason})
        return asdict(decision)

    return _run_stage(ctx, "promote", body)


def _download_model(uri: str, source: str, dest: Path) -> Path:
    """Fetch a registered transformers model and save it as a plain checkpoint directory."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    components = mlflow.transformers.load_model(source, return_type="components")
    dest.mkdir(parents=True, exist_ok=True)
    components["model"].save_pretrained(dest)
    components["tokenizer"].save_pretrained(dest)
    return dest
