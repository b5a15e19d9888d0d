"""The promotion gate's statistics: a paired, one-sided bootstrap bound on the improvement.

Candidate and champion are scored on the same evaluation targets. The gate takes the per-target
differences (candidate - champion), resamples targets with replacement and reads a one-sided
lower confidence bound on the mean difference off the bootstrap distribution. The candidate
passes only when that bound is above the margin, so a candidate that is the champion plus
sampling noise passes in at most about (1 - level) of trials.

The bound is Hesterberg's "expanded percentile": the plain percentile bound is too narrow
with a few dozen targets (it passes such a candidate in about 5% of trials at level 0.95, the
edge of what is allowed); widening the tail probability by sqrt(n / (n - 1)) and Student's t
brings that to about 3.5% with 16 targets, at almost no cost in power.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

# Gate metric statistic -> the per-target column whose mean over targets is that statistic.
PER_TARGET_COLUMN = {"success_mean": "success_rate", "rating_mean": "rating_mean", "turns_mean": "turns_mean"}


@dataclass(frozen=True)
class GateResult:
    passed: bool
    improvement: float
    """Mean over targets of candidate - champion."""
    lower_bound: float
    """One-sided lower confidence bound on ``improvement`` at ``level``: the interval is [lower_bound, inf)."""
    level: float
    margin: float
    num_targets: int
    resamples: int


def target_scores(per_target: pd.DataFrame, metric: str) -> dict[str, float]:
    """Per-target values of a gate metric ('suite/statistic') from an evaluation's per_target table.

    The table holds each suite's largest budget, where the headline metrics are measured, and
    every target has the same number of samples, so the mean of these values is the metric.
    """
    suite, _, statistic = metric.rpartition("/")
    if statistic not in PER_TARGET_COLUMN or not suite or "/" in suite:
        raise ValueError(
            f"gate metric {metric!r} has no per-target form; use '<suite>/<statistic>' with statistic "
            f"one of {sorted(PER_TARGET_COLUMN)}"
        )
    rows = per_target[per_target["suite"] == suite]
    if rows.empty:
        raise ValueError(f"gate metric {metric!r}: suite {suite!r} is not in the evaluation "
                         f"(suites: {sorted(per_target['suite'].unique())})")
    column = PER_TARGET_COLUMN[statistic]
    if rows[column].isna().any():
        missing = sorted(rows.loc[rows[column].isna(), "target_id"].astype(str))
        raise ValueError(f"gate metric {metric!r}: no {column} for target(s) {missing}")
    return {str(t): float(v) for t, v in zip(rows["target_id"], rows[column])}


def paired_differences(candidate: dict[str, float], champion: dict[str, float]) -> np.ndarray:
    """candidate - champion per target, in target order; both must cover the same targets."""
    if set(candidate) != set(champion):
        only_candidate = sorted(set(candidate) - set(champion))
        only_champion = sorted(set(champion) - set(candidate))
        raise ValueError(
            "candidate and champion were scored on different targets "
            f"(only the candidate: {only_candidate}; only the champion: {only_champion}); "
            "re-evaluate the champion on the candidate's suite"
        )
    if len(candidate) < 2:
        raise ValueError(f"the gate needs at least 2 paired targets, got {len(candidate)}")
    return np.array([candidate[t] - champion[t] for t in sorted(candidate)], dtype=float)


def lower_bound(differences: np.ndarray, level: float, resamples: int, seed: int) -> float:
    """One-sided expanded-percentile bootstrap lower bound on the mean of ``differences``."""
    if not 0.5 <= level < 1.0:
        raise ValueError(f"confidence level must be in [0.5, 1), got {level}")
    if resamples < 100:
        raise ValueError(f"bootstrap resamples must be at least 100, got {resamples}")
    n = len(differences)
    rng = np.random.default_rng(seed)
    means = differences[rng.integers(0, n, size=(resamples, n))].mean(axis=1)
    tail = stats.norm.cdf(math.sqrt(n / (n - 1)) * stats.t.ppf(1.0 - level, n - 1))
    return float(np.quantile(means, tail))


def paired_interval(differences: np.ndarray, level: float, resamples: int, seed: int = 0) -> tuple[float, float]:
    """Two-sided interval at ``level`` on the mean of ``differences``: two one-sided bounds at (1 + level) / 2."""
    one_sided = (1.0 + level) / 2
    low = lower_bound(differences, one_sided, resamples, seed)
    high = -lower_bound(-differences, one_sided, resamples, seed)
    return low, high


def paired_gate(
    candidate: dict[str, float],
    champion: dict[str, float],
    *,
    margin: float,
    level: float,
    resamples: int,
    seed: int = 0,
) -> GateResult:
    """Pass when the lower confidence bound on the paired improvement exceeds ``margin``."""
    differences = paired_differences(candidate, champion)
    bound = lower_bound(differences, level, resamples, seed)
    return GateResult(bound > margin, float(differences.mean()), bound, level, margin, len(differences), resamples)


def promotion_rate(
    improvement: float, *, trials: int, num_targets: int, samples: int, level: float = 0.95,
    margin: float = 0.0, resamples: int = 2000, seed: int = 0,
) -> float:
    """How often the gate promotes a candidate whose true success rate on every target is the
    champion's plus ``improvement``, when both are scored with ``samples`` games per target.

    Per-target success rates of the champion are drawn uniformly; with ``improvement`` 0 the
    result is the false-promotion rate of the gate on a suite of ``num_targets`` targets.
    """
    promoted = 0
    for trial in range(trials):
        rng = np.random.default_rng([seed, trial])
        base = rng.uniform(0.0, 1.0 - max(improvement, 0.0), num_targets)
        champion = rng.binomial(samples, base) / samples
        candidate = rng.binomial(samples, base + improvement) / samples
        names = [f"t{i}" for i in range(num_targets)]
        result = paired_gate(dict(zip(names, candidate)), dict(zip(names, champion)), margin=margin,
                             level=level, resamples=resamples, seed=trial)
        promoted += result.passed
    return promoted / trials


def main() -> int:
    """``python -m deltabelief.gate``: the gate's promotion rates on simulated suites."""
    import argparse

    from deltabelief.user_errors import run_command

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--trials", type=int, default=2000)
    parser.add_argument("--level", type=float, default=0.95)
    parser.add_argument("--samples", type=int, default=4, help="games per target (eval.k)")
    parser.add_argument("-v", "--verbose", action="store_true", help="show the traceback of an error")
    args = parser.parse_args()
    return run_command("deltabelief.gate", lambda: _print_rates(args), verbose=args.verbose)


def _print_rates(args) -> int:
    print(f"level {args.level}, {args.samples} games per target, {args.trials} seeded trials per cell")
    print("targets  improvement  promoted")
    for num_targets in (4, 16, 64):
        for improvement in (0.0, 0.1, 0.2, 0.3):
            rate = promotion_rate(improvement, trials=args.trials, num_targets=num_targets,
                                  samples=args.samples, level=args.level)
            print(f"{num_targets:7d}  {improvement:11.2f}  {rate:8.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
