"""PNG plots of an evaluation: belief curves, pass@k, interaction scaling, information per turn
(matplotlib, Agg).

Every function takes a tidy data frame and a path, draws one figure, saves it and
returns the path. Nothing is shown on screen.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

OUTCOME_COLORS = {"solved": "#1b9e77", "unsolved": "#d95f02"}
DPI = 120


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def plot_belief_curves(curves: pd.DataFrame, path: str | Path) -> Path:
    """Mean log belief per turn (± 1 std band), solved vs unsolved games, one panel per suite.

    ``curves``: columns suite, outcome, turn, mean, std, count (see ``metrics.belief_curves``).
    """
    suites = sorted(curves["suite"].unique())
    fig, axes = plt.subplots(1, max(len(suites), 1), figsize=(5.5 * max(len(suites), 1), 4), squeeze=False)
    for ax, suite in zip(axes[0], suites):
        for outcome, part in curves[curves["suite"] == suite].groupby("outcome"):
            part = part.sort_values("turn")
            color = OUTCOME_COLORS.get(outcome, None)
            label = f"{outcome} (n={int(part['count'].iloc[0])})"
            ax.plot(part["turn"], part["mean"], marker="o", markersize=3, color=color, label=label)
            ax.fill_between(part["turn"], part["mean"] - part["std"], part["mean"] + part["std"],
                            color=color, alpha=0.15)
        ax.set_title(f"{suite}: belief in the target")
        ax.set_xlabel("turn t (0 = before any question)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("mean log b_t (± 1 std)")
        ax.grid(alpha=0.3)
        ax.legend()
    return _save(fig, path)


def plot_pass_at_k(pass_table: pd.DataFrame, path: str | Path) -> Path:
    """pass@k against k, one line per suite. ``pass_table``: columns suite, k, pass_at_k."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for suite, part in pass_table.groupby("suite"):
        part = part.sort_values("k")
        ax.plot(part["k"], part["pass_at_k"], marker="o", label=suite)
    ax.set_xlabel("k (samples per target)")
    ax.set_ylabel("pass@k (unbiased)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xticks(sorted(pass_table["k"].unique()))
    ax.set_title("pass@k at the largest budget")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    return _save(fig, path)


def plot_scaling(scaling: pd.DataFrame, path: str | Path) -> Path:
    """Success (mean@k ± std) against turn budget per suite; rated suites get a rating panel.

    ``scaling``: columns suite, budget, success_mean, success_std, rated (bool), rating_mean.
    """
    success = scaling[~scaling["rated"]]
    rated = scaling[scaling["rated"]]
    panels = int(not success.empty) + int(not rated.empty)
    fig, axes = plt.subplots(1, max(panels, 1), figsize=(6 * max(panels, 1), 4), squeeze=False)
    axes = list(axes[0])
    if not success.empty:
        ax = axes.pop(0)
        for suite, part in success.groupby("suite"):
            part = part.sort_values("budget")
            ax.errorbar(part["budget"], part["success_mean"], yerr=part["success_std"], marker="o", capsize=3,
                        label=suite)
        ax.set_xlabel("turn budget")
        ax.set_ylabel("success rate (mean@k ± std)")
        ax.set_ylim(-0.02, 1.02)
        ax.set_xticks(sorted(success["budget"].unique()))
        ax.set_title("Interaction scaling")
        ax.grid(alpha=0.3)
        ax.legend()
    if not rated.empty:
        ax = axes.pop(0)
        for suite, part in rated.groupby("suite"):
            part = part.sort_values("budget")
            ax.plot(part["budget"], part["rating_mean"], marker="o", label=suite)
        ax.set_xlabel("clarifying turns")
        ax.set_ylabel("mean rating of the final answer (1-10)")
        ax.set_ylim(0.5, 10.5)
        ax.set_xticks(sorted(rated["budget"].unique()))
        ax.set_title("Rating after each turn")
        ax.grid(alpha=0.3)
        ax.legend()
    return _save(fig, path)


def plot_information(per_turn: pd.DataFrame, path: str | Path) -> Path:
    """Mean bits per question and the share of zero-gain questions against the turn index.

    ``per_turn``: columns suite, turn, bits_mean, zero_gain_share, count (``information_per_turn``).
    """
    fig, (bits_ax, zero_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for suite, part in per_turn.groupby("suite"):
        part = part.sort_values("turn")
        bits_ax.plot(part["turn"], part["bits_mean"], marker="o", markersize=3, label=suite)
        zero_ax.plot(part["turn"], part["zero_gain_share"], marker="o", markersize=3, label=suite)
    bits_ax.axhline(1.0, color="grey", linestyle="--", linewidth=1, label="a perfect halving")
    bits_ax.set_ylabel("mean bits gained by the question")
    zero_ax.set_ylabel("share of questions that gain nothing")
    zero_ax.set_ylim(-0.02, 1.02)
    for ax in (bits_ax, zero_ax):
        ax.set_xlabel("turn")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    return _save(fig, path)
