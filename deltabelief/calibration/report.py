"""The calibration report: template choice, ``calibration.json`` and its PNG plots.

``calibration.json`` (in the output directory) holds the chosen template and the criterion
that chose it, the metrics per template (see docs/calibration.md for every field), the exact
posterior curves, and the targets that cannot be located under each template. The training
stage reads it through :func:`load_chosen_template` and :func:`excluded_target_ids`.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

log = logging.getLogger(__name__)

REPORT_NAME = "calibration.json"
RELIABILITY_NAME = "reliability.png"
CURVES_NAME = "belief_curves.png"
FALLBACK = "first-listed"
"""Criterion recorded when no template has a defined Spearman or AUROC."""


@dataclass
class CalibrationReport:
    chosen_template: str
    criterion: str
    """The criterion that decided: 'spearman', 'auroc' (requested, or the fallback when no template
    has a defined Spearman) or 'first-listed' (neither is defined for any template)."""
    per_template: dict[str, dict[str, Any]]
    """Template -> its metrics (docs/calibration.md)."""
    excluded_targets: list[dict[str, str]] = field(default_factory=list)
    """{target_id, target, template, reason} for every target that cannot be located under a template."""
    paths: dict[str, str] = field(default_factory=dict)
    """'json', 'reliability', 'belief_curves' -> file paths."""
    requested_criterion: str = "spearman"
    templates: list[str] = field(default_factory=list)
    """The templates in the order they were given (ties go to the earliest)."""
    summary: dict[str, Any] = field(default_factory=dict)
    """Model, trajectories file, game counts, candidate settings, exact posterior curves."""

    def to_dict(self) -> dict[str, Any]:
        return _finite_or_none(asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CalibrationReport":
        return cls(**data)

    def metrics(self) -> dict[str, float]:
        """Scalar figures under tracking-safe names: ``calibration/template_{i}/{name}`` for the
        i-th template (templates hold quotes and braces, which MLflow refuses in metric names),
        ``calibration/chosen/{name}`` for the chosen one, and ``calibration/chosen_index``."""
        out: dict[str, float] = {"calibration/chosen_index": float(self.templates.index(self.chosen_template))}
        for i, template in enumerate(self.templates):
            for name, value in self.per_template[template].items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                    out[f"calibration/template_{i}/{name}"] = float(value)
                    if template == self.chosen_template:
                        out[f"calibration/chosen/{name}"] = float(value)
        return out


def _finite_or_none(value: Any) -> Any:
    """NaN and ±inf become null so the JSON is strict."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    return value


def _defined(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def choose_template(per_template: dict[str, dict[str, Any]], templates: Sequence[str], criterion: str
                    ) -> tuple[str, str]:
    """(template, criterion used): the highest ``criterion`` value, earliest template on ties.

    'spearman' falls back to 'auroc' when no template has a defined Spearman (no exact posterior);
    when neither is defined anywhere, the first template is kept and 'first-listed' is recorded.
    """
    if criterion not in ("spearman", "auroc"):
        raise ValueError(f"calibration.criterion must be 'spearman' or 'auroc', got {criterion!r}")
    if not templates:
        raise ValueError("no templates to choose from (calibration.templates is empty)")
    order = ["spearman", "auroc"] if criterion == "spearman" else ["auroc"]
    for name in order:
        key = {"spearman": "spearman", "auroc": "auroc_final"}[name]
        scored = [(per_template[t].get(key), -i, t) for i, t in enumerate(templates)]
        scored = [s for s in scored if _defined(s[0])]
        if scored:
            if name != criterion:
                log.warning("no template has a defined %s; choosing by %s", criterion, name)
            return max(scored)[2], name
    log.warning("no template has a defined Spearman or AUROC; keeping the first template %r", templates[0])
    return templates[0], FALLBACK


def write_report_json(report: CalibrationReport, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report.to_dict(), indent=1, allow_nan=False))
    return path


def _report_path(report_dir_or_json: str | Path) -> Path:
    path = Path(report_dir_or_json)
    path = path / REPORT_NAME if path.is_dir() else path
    if not path.exists():
        raise FileNotFoundError(f"no calibration report at {path} (run `deltabelief calibrate` first)")
    return path


def load_report(report_dir_or_json: str | Path) -> CalibrationReport:
    """A :class:`CalibrationReport` from ``calibration.json`` or the directory holding it."""
    return CalibrationReport.from_dict(json.loads(_report_path(report_dir_or_json).read_text()))


def load_chosen_template(report_dir_or_json: str | Path) -> str:
    """The elicitation template the calibration chose (for ``belief.template`` of training)."""
    return load_report(report_dir_or_json).chosen_template


def excluded_target_ids(report: CalibrationReport | str | Path, template: str | None = None) -> set[str]:
    """Ids of the targets that cannot be located under ``template`` (default: the chosen one)."""
    if not isinstance(report, CalibrationReport):
        report = load_report(report)
    template = report.chosen_template if template is None else template
    return {e["target_id"] for e in report.excluded_targets if e["template"] == template}


def filter_training_targets(targets: Sequence, report: CalibrationReport | str | Path) -> list:
    """``targets`` (objects with an ``id``) without those excluded under the chosen template."""
    excluded = excluded_target_ids(report)
    kept = [t for t in targets if t.id not in excluded]
    if len(kept) < len(targets):
        log.warning("left out %d training target(s) whose tokens cannot be located under the chosen template",
                    len(targets) - len(kept))
    return kept


# ---------------------------------------------------------------- plots


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_reliability(report: CalibrationReport, path: Path) -> Path:
    """Per template: mean candidate-normalised p(target) against the mean exact posterior p*, per bin."""
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect (p = p*)")
    drawn = False
    for template in report.templates:
        bins = report.per_template[template].get("reliability")
        if not bins:
            continue
        points = [(p, r, n) for p, r, n in zip(bins["mean_predicted"], bins["mean_reference"], bins["counts"]) if n]
        if not points:
            continue
        xs, ys, ns = zip(*points)
        ece = report.per_template[template].get("ece")
        label = f"{template}" + (f" (ECE {ece:.3f})" if _defined(ece) else "")
        ax.plot(xs, ys, marker="o", label=label)
        ax.scatter(xs, ys, s=[10 + 90 * n / max(ns) for n in ns], alpha=0.3)
        drawn = True
    if not drawn:
        ax.text(0.5, 0.5, "no exact posterior\n(no knowledge-base games)", ha="center", va="center")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="candidate-normalised p(target) (bin mean)",
           ylabel="exact posterior p* (bin mean)", title="Reliability against the exact posterior")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_template_curves(report: CalibrationReport, path: Path) -> Path:
    """Left: mean log b_t per turn and template (dashed: exact log b*_t). Right: mean
    candidate-normalised p(target) per turn (dashed: exact p*_t)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for template in report.templates:
        metrics = report.per_template[template]
        curve = metrics.get("mean_log_belief_per_turn") or []
        left.plot(range(len(curve)), curve, marker="o", markersize=3, label=template)
        probs = metrics.get("mean_true_probability_per_turn") or []
        right.plot(range(len(probs)), probs, marker="o", markersize=3, label=template)
    exact = report.summary.get("exact_posterior") or {}
    if exact.get("mean_log_posterior_per_turn"):
        curve = exact["mean_log_posterior_per_turn"]
        left.plot(range(len(curve)), curve, color="black", linestyle="--", label="exact log b*_t")
    if exact.get("mean_probability_per_turn"):
        probs = exact["mean_probability_per_turn"]
        right.plot(range(len(probs)), probs, color="black", linestyle="--", label="exact p*_t (candidates)")
    left.set(xlabel="turn t (0 = before any question)", ylabel="mean log b_t (nats)", title="Belief in the target")
    right.set(xlabel="turn t", ylabel="mean p(target) over candidates", ylim=(0, 1),
              title="Candidate-normalised belief")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, path)


def write_report(report: CalibrationReport, out_dir: str | Path) -> CalibrationReport:
    """Write the two PNGs and ``calibration.json`` into ``out_dir``; fills ``report.paths``."""
    out = Path(out_dir)
    report.paths = {
        "json": str(out / REPORT_NAME),
        "reliability": str(plot_reliability(report, out / RELIABILITY_NAME)),
        "belief_curves": str(plot_template_curves(report, out / CURVES_NAME)),
    }
    write_report_json(report, out / REPORT_NAME)
    return report
