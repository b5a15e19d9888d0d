"""Calibration metrics: pure functions of numbers (numpy/scipy), no model, no config.

Shape notation: ``M`` scored items (trajectories or (trajectory, turn) pairs), ``C`` candidates,
``Bn`` reliability bins.

- :func:`auroc`: area under the ROC curve of a score for a binary label, ties counting 1/2
  (the Mann–Whitney statistic U / (n_pos · n_neg)).
- :func:`spearman`: Spearman's ρ, the Pearson correlation of average ranks.
- :func:`candidate_probabilities`: softmax over candidates of log b (candidate-normalised belief).
- :func:`rank_of_true`: 1-based rank of the true candidate, ties sharing their average rank.
- :func:`reliability_bins` / :func:`ece`: equal-width bins of a predicted probability, and the
  expected calibration error Σ_b (n_b / M) · |mean_b(pred) − mean_b(ref)| against a reference
  probability (here the exact posterior, not a 0/1 outcome).

Undefined values (one class only, a constant input, no items) are NaN, never a made-up number.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import log_softmax
from scipy.stats import rankdata


def _vector(values, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    return array


def auroc(scores, labels) -> float:
    """Probability that a random positive outranks a random negative (ties count 1/2).

    Args:
        scores: [M] real scores (higher means more likely positive).
        labels: [M] 0/1 or bool.
    Returns:
        AUROC in [0, 1]; NaN when either class is empty.
    """
    scores, labels = _vector(scores, "scores"), _vector(labels, "labels")
    if scores.shape != labels.shape:
        raise ValueError(f"scores {scores.shape} and labels {labels.shape} differ in length")
    if not np.isin(labels, (0.0, 1.0)).all():
        raise ValueError(f"labels must be 0/1, got {sorted(set(labels.tolist()))}")
    positive = labels == 1.0
    num_pos, num_neg = int(positive.sum()), int((~positive).sum())
    if num_pos == 0 or num_neg == 0:
        return float("nan")
    ranks = rankdata(scores, method="average")  # [M] ties share their average rank
    u = ranks[positive].sum() - num_pos * (num_pos + 1) / 2  # Mann–Whitney U of the positives
    return float(u / (num_pos * num_neg))


def spearman(x, y) -> float:
    """Spearman's ρ of two [M] samples; NaN when M < 2 or either sample is constant."""
    x, y = _vector(x, "x"), _vector(y, "y")
    if x.shape != y.shape:
        raise ValueError(f"x {x.shape} and y {y.shape} differ in length")
    if len(x) < 2:
        return float("nan")
    rx, ry = rankdata(x, method="average"), rankdata(y, method="average")  # [M] average ranks
    dx, dy = rx - rx.mean(), ry - ry.mean()
    denominator = np.sqrt((dx * dx).sum() * (dy * dy).sum())
    if denominator == 0:
        return float("nan")
    return float((dx * dy).sum() / denominator)  # Pearson correlation of the ranks


def candidate_probabilities(log_beliefs) -> np.ndarray:
    """Softmax over the last axis: [..., C] log b per candidate -> [..., C] probabilities.

    −inf entries (a candidate ruled out) get probability 0; each row needs one finite entry.
    """
    array = np.asarray(log_beliefs, dtype=np.float64)
    if array.shape[-1] == 0:
        raise ValueError("candidate_probabilities needs at least one candidate")
    if np.isnan(array).any() or (~np.isfinite(array).any(axis=-1)).any():
        raise ValueError("every row of log beliefs needs at least one finite value and no NaN")
    return np.exp(log_softmax(array, axis=-1))


def rank_of_true(log_beliefs, true_index: int = 0) -> float:
    """1-based rank of candidate ``true_index`` by decreasing log b; tied candidates share the
    average of their ranks (so a constant scorer puts the target in the middle).

    Args:
        log_beliefs: [C] log b of each candidate.
    """
    values = _vector(log_beliefs, "log_beliefs")
    if not 0 <= true_index < len(values):
        raise ValueError(f"true_index {true_index} outside {len(values)} candidates")
    true = values[true_index]
    higher = int((values > true).sum())
    tied = int((values == true).sum())  # includes the true candidate itself
    return higher + (tied + 1) / 2


@dataclass
class ReliabilityBins:
    """Equal-width bins of the predicted probability over [0, 1]."""

    edges: np.ndarray
    """[Bn+1] bin edges."""
    counts: np.ndarray
    """[Bn] items per bin."""
    mean_predicted: np.ndarray
    """[Bn] mean predicted probability per bin (NaN for an empty bin)."""
    mean_reference: np.ndarray
    """[Bn] mean reference probability per bin (NaN for an empty bin)."""

    def to_dict(self) -> dict:
        """JSON-ready lists; an empty bin's means are None."""
        return {"edges": self.edges.tolist(), "counts": self.counts.astype(int).tolist(),
                "mean_predicted": _nan_to_none(self.mean_predicted),
                "mean_reference": _nan_to_none(self.mean_reference)}


def _nan_to_none(values: np.ndarray) -> list:
    return [None if np.isnan(v) else float(v) for v in values]


def reliability_bins(predicted, reference, num_bins: int = 10) -> ReliabilityBins:
    """Group [M] predicted probabilities into ``num_bins`` equal-width bins (the last bin is closed)
    and average the predicted and the [M] reference probabilities in each."""
    predicted, reference = _vector(predicted, "predicted"), _vector(reference, "reference")
    if predicted.shape != reference.shape:
        raise ValueError(f"predicted {predicted.shape} and reference {reference.shape} differ in length")
    if num_bins < 1:
        raise ValueError(f"num_bins must be >= 1, got {num_bins}")
    for name, values in (("predicted", predicted), ("reference", reference)):
        if ((values < 0) | (values > 1) | np.isnan(values)).any():
            raise ValueError(f"{name} probabilities must lie in [0, 1]")
    index = np.minimum((predicted * num_bins).astype(int), num_bins - 1)  # [M] bin of each item
    counts = np.bincount(index, minlength=num_bins).astype(np.float64)  # [Bn]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_pred = np.bincount(index, weights=predicted, minlength=num_bins) / counts  # [Bn]
        mean_ref = np.bincount(index, weights=reference, minlength=num_bins) / counts  # [Bn]
    return ReliabilityBins(np.linspace(0.0, 1.0, num_bins + 1), counts, mean_pred, mean_ref)


def ece(predicted, reference, num_bins: int = 10) -> float:
    """Expected calibration error against a reference probability:
    Σ_b (n_b / M) · |mean_b(predicted) − mean_b(reference)|; NaN when M = 0."""
    bins = reliability_bins(predicted, reference, num_bins)
    total = bins.counts.sum()
    if total == 0:
        return float("nan")
    filled = bins.counts > 0
    gaps = np.abs(bins.mean_predicted[filled] - bins.mean_reference[filled])  # [filled bins]
    return float((bins.counts[filled] / total * gaps).sum())


def mean_per_turn(curves: list) -> tuple[np.ndarray, np.ndarray]:
    """Mean over ragged curves per turn index: list of [N_i+1] -> ([T+1] means, [T+1] counts)."""
    width = max((len(c) for c in curves), default=0)
    sums, counts = np.zeros(width), np.zeros(width)
    for curve in curves:
        curve = _vector(curve, "curve")
        sums[: len(curve)] += curve
        counts[: len(curve)] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / counts, counts


def share_rising(curves: list) -> float:
    """Share of curves whose last value exceeds their first (curves with one point are left out)."""
    usable = [c for c in curves if len(c) >= 2]
    if not usable:
        return float("nan")
    return float(np.mean([float(c[-1] > c[0]) for c in usable]))
