"""Evaluation metrics: success mean@k ± std, unbiased pass@k, turn and status rates, belief curves.

Shape notation: ``N`` targets, ``K`` samples (repeats) per target, ``T`` turns.

``successes`` is a 0/1 matrix ``[N, K]``: row i holds the K games played on target i,
column j the j-th repeat of every target.

- mean@k (:func:`mean_at_k`), as the reference computes it: the success rate of each
  repeat j over the N targets, r_j = mean_i s[i, j]; report mean_j r_j and the
  population standard deviation std_j r_j (numpy's default, ddof = 0).
- pass@k (:func:`pass_at_k`), the unbiased estimator of Chen et al. (2021, "Evaluating
  Large Language Models Trained on Code", eq. 1): with c of n samples solved,
  pass@k = 1 − C(n − c, k) / C(n, k), averaged over targets, for k = 1..n.

All functions here are pure: arrays and data frames in, numbers and frames out.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

# Statuses counted as rates of all turns played (games.base.STATUSES).
RATE_STATUSES = ("invalid", "repeated", "unanswerable")


def _check_successes(successes: np.ndarray) -> np.ndarray:
    array = np.asarray(successes)
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"successes must be a non-empty [n_targets, n_samples] matrix, got shape {array.shape}")
    if not np.isin(array, (0, 1)).all():
        raise ValueError("successes must hold only 0/1 (or False/True) values")
    return array.astype(np.int64)


def pass_at_k(successes: np.ndarray) -> list[float]:
    """Unbiased pass@k for k = 1..K, averaged over targets.

    Args:
        successes: [N, K] 0/1 matrix.
    Returns:
        ``[pass@1, ..., pass@K]``; pass@k = mean_i (1 − C(K − c_i, k) / C(K, k)),
        c_i = number of solved samples of target i (exact integer binomials).
    """
    array = _check_successes(successes)
    n = array.shape[1]
    solved = array.sum(axis=1)  # [N]
    values = []
    for k in range(1, n + 1):
        per_target = [1.0 - math.comb(n - int(c), k) / math.comb(n, k) for c in solved]  # C(m, k) = 0 for m < k
        values.append(float(np.mean(per_target)))
    return values


def mean_at_k(successes: np.ndarray) -> tuple[float, float]:
    """Success mean@k ± std across repeats.

    Args:
        successes: [N, K] 0/1 matrix.
    Returns:
        (mean_j r_j, std_j r_j) with r_j = mean_i successes[i, j], the success rate of repeat j;
        std is the population standard deviation (ddof = 0), as in the reference.
    """
    array = _check_successes(successes)
    rates = array.mean(axis=0)  # [K]
    return float(rates.mean()), float(rates.std())


def success_matrix(games: pd.DataFrame) -> tuple[list[str], np.ndarray]:
    """The [N, K] success matrix of one suite at one budget, from results-table rows.

    Rows are targets (sorted by id), columns the ``sample`` index. Every target must have the
    same samples 0..K-1, else a ValueError names the target.
    """
    if games.empty:
        raise ValueError("no games to build a success matrix from")
    pivot = games.pivot_table(index="target_id", columns="sample", values="solved", aggfunc="first")
    samples = sorted(games["sample"].unique())
    if samples != list(range(len(samples))):
        raise ValueError(f"sample indices must be 0..K-1, got {samples}")
    missing = pivot.isna().any(axis=1)
    if missing.any():
        raise ValueError(f"target(s) {sorted(pivot.index[missing])} lack some of the samples {samples}")
    return [str(i) for i in pivot.index], pivot.to_numpy(dtype=np.int64)


def status_rates(games: pd.DataFrame) -> dict[str, float]:
    """Invalid / repeated / unanswerable turns as fractions of all turns played (0 when no turns)."""
    total = int(games["num_turns"].sum())
    return {
        f"{status}_rate": (float(games[f"{status}_turns"].sum()) / total if total else 0.0)
        for status in RATE_STATUSES
    }


def game_summary(games: pd.DataFrame, rated: bool = False) -> dict[str, float]:
    """Headline numbers for the games of one suite at one budget.

    Keys: turns_mean, the status rates, num_games, num_targets and either (success suites)
    success_mean, success_std, pass@1..pass@K, turns_solved_mean (NaN when nothing was
    solved), or (``rated`` suites, whose games have no success) rating_mean, rating_std
    (ddof = 0, over parsed ratings) and rating_missing (games whose rating could not be parsed).
    """
    target_ids, matrix = success_matrix(games)
    out: dict[str, float] = {}
    if rated:
        ratings = games["rating"].astype(float)
        out["rating_mean"] = float(ratings.mean())
        out["rating_std"] = float(ratings.std(ddof=0))
        out["rating_missing"] = float(ratings.isna().sum())
    else:
        mean, std = mean_at_k(matrix)
        out.update({"success_mean": mean, "success_std": std})
        out.update({f"pass@{k}": v for k, v in enumerate(pass_at_k(matrix), start=1)})
        solved = games[games["solved"]]
        out["turns_solved_mean"] = float(solved["num_turns"].mean()) if len(solved) else math.nan
    out["turns_mean"] = float(games["num_turns"].mean())
    out.update(status_rates(games))
    out["num_games"] = float(len(games))
    out["num_targets"] = float(len(target_ids))
    return out


def per_target_table(games: pd.DataFrame) -> pd.DataFrame:
    """One row per (suite, budget, target): samples, success rate, mean turns, status counts, rating."""
    grouped = games.groupby(["suite", "budget", "target_id"], sort=True)
    table = grouped.agg(
        target=("target", "first"),
        samples=("sample", "count"),
        success_rate=("solved", "mean"),
        turns_mean=("num_turns", "mean"),
        invalid_turns=("invalid_turns", "sum"),
        repeated_turns=("repeated_turns", "sum"),
        unanswerable_turns=("unanswerable_turns", "sum"),
        rating_mean=("rating", "mean"),
    )
    return table.reset_index()


def belief_curves(log_beliefs: list[np.ndarray], solved: list[bool]) -> pd.DataFrame:
    """Mean log belief per turn, split by outcome.

    Args:
        log_beliefs: one array [N_i + 1] per game (log b_0..log b_{N_i}).
        solved: whether each game was solved.
    Returns:
        Columns ``outcome`` ('solved' / 'unsolved'), ``turn``, ``mean``, ``std`` (ddof = 0),
        ``count``. At turn t only games that lasted at least t turns contribute (solved games
        end early, so late turns average over fewer games; ``count`` says how many).
    """
    if len(log_beliefs) != len(solved):
        raise ValueError(f"{len(log_beliefs)} belief rows but {len(solved)} outcomes")
    rows = []
    for outcome, wanted in (("solved", True), ("unsolved", False)):
        curves = [np.asarray(b, dtype=float) for b, s in zip(log_beliefs, solved) if bool(s) == wanted and len(b)]
        if not curves:
            continue
        for turn in range(max(len(c) for c in curves)):
            values = np.array([c[turn] for c in curves if len(c) > turn])  # [games reaching turn t]
            rows.append(
                {"outcome": outcome, "turn": turn, "mean": float(values.mean()),
                 "std": float(values.std()), "count": int(len(values))}
            )
    return pd.DataFrame(rows, columns=["outcome", "turn", "mean", "std", "count"])


def summarize(results: pd.DataFrame, rated_suites: set[str] | frozenset[str] = frozenset()) -> pd.DataFrame:
    """One row per (suite, budget) with :func:`game_summary`'s numbers.

    Every row has every column (NaN where a number does not apply: success and pass@k for
    rated suites, ratings for the others); ``pass@k`` repeats pass@K, K = samples per target.
    """
    rows = []
    for (suite, budget), games in results.groupby(["suite", "budget"], sort=True):
        rated = suite in rated_suites
        summary = game_summary(games, rated=rated)
        k = int(games["sample"].max()) + 1
        rows.append({"suite": suite, "budget": int(budget), "rated": rated, "k": k, **summary,
                     "pass@k": summary.get(f"pass@{k}", math.nan)})
    frame = pd.DataFrame(rows)
    for column in ("success_mean", "success_std", "turns_solved_mean", "pass@1", "rating_mean", "rating_std",
                   "rating_missing"):
        if column not in frame.columns:
            frame[column] = math.nan
    return frame
