"""Paired comparison of two models on the same targets: the mean gain and its bootstrap interval.

Each target contributes one number per model, its success rate over the k games played on it
(``per_target.parquet``). The gain of model A over model B is the mean over targets of
d_i = rate_A(i) − rate_B(i); its interval is the percentile bootstrap over targets (targets
resampled with replacement), which keeps the pairing and makes no normality assumption.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def bootstrap_mean_interval(differences: np.ndarray, level: float = 0.95, resamples: int = 10_000,
                            seed: int = 0) -> tuple[float, float]:
    """Two-sided percentile bootstrap interval of the mean of ``differences`` [N]."""
    values = np.asarray(differences, dtype=float)
    if values.ndim != 1 or len(values) == 0:
        raise ValueError(f"need a non-empty 1-D array of paired differences, got shape {values.shape}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(resamples, len(values)))].mean(axis=1)  # [R]
    tail = (1.0 - level) / 2
    return float(np.quantile(means, tail)), float(np.quantile(means, 1.0 - tail))


def paired_gain(candidate: pd.DataFrame, baseline: pd.DataFrame, suite: str, budget: int,
                level: float = 0.95, seed: int = 0) -> dict[str, float]:
    """Gain in success rate of ``candidate`` over ``baseline`` on the targets both played.

    Both frames are ``per_target.parquet`` tables (suite, budget, target_id, success_rate, ...).
    Returns mean, ci_low, ci_high, num_targets, candidate and baseline means on the shared targets.
    """
    def rates(frame: pd.DataFrame, name: str) -> pd.Series:
        rows = frame[(frame["suite"] == suite) & (frame["budget"] == budget)]
        if rows.empty:
            raise ValueError(f"{name}: no per-target results for suite {suite!r} at budget {budget}")
        return rows.set_index("target_id")["success_rate"].astype(float)

    a, b = rates(candidate, "candidate"), rates(baseline, "baseline")
    shared = a.index.intersection(b.index)
    if shared.empty:
        raise ValueError(f"candidate and baseline share no target in suite {suite!r}")
    d = (a[shared] - b[shared]).to_numpy()
    low, high = bootstrap_mean_interval(d, level, seed=seed)
    return {"mean": float(d.mean()), "ci_low": low, "ci_high": high, "num_targets": float(len(shared)),
            "candidate": float(a[shared].mean()), "baseline": float(b[shared].mean())}
