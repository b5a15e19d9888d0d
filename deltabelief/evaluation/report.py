"""The Markdown report of an evaluation: tables, plots and notes in one file.

:func:`write_report` takes the tidy tables :func:`deltabelief.evaluation.evaluate`
builds and writes ``report.md`` next to the plots (linked by relative path).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

MAX_CELL_CHARS = 60
MAX_TARGET_ROWS = 50
"""Per-target rows shown per suite (the full table is in per_target.parquet)."""


def _cell(value: Any) -> str:
    if value is pd.NA or value is None:
        return "–"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (float, np.floating)):
        return "–" if math.isnan(value) else f"{value:.3f}"
    text = str(value).replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= MAX_CELL_CHARS else text[: MAX_CELL_CHARS - 1] + "…"


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (floats to 3 decimals, NaN as '–', long text cut)."""
    if frame.empty:
        return "_(no rows)_\n"
    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(_cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body]) + "\n"


def _pm(mean: float, std: float) -> str:
    return "–" if math.isnan(mean) else f"{mean:.3f} ± {std:.3f}"


def summary_table(summary: pd.DataFrame) -> pd.DataFrame:
    """The largest budget of each suite -> the report's summary columns."""
    summary = summary[summary["budget"] == summary.groupby("suite")["budget"].transform("max")]
    out = pd.DataFrame(
        {
            "suite": summary["suite"],
            "budget": summary["budget"],
            "targets": summary["num_targets"].astype(int),
            "games": summary["num_games"].astype(int),
            "success (mean@k ± std)": [_pm(m, s) for m, s in zip(summary["success_mean"], summary["success_std"])],
            "pass@1": summary["pass@1"],
            "pass@k": summary["pass@k"],
            "mean turns": summary["turns_mean"],
            "invalid": summary["invalid_rate"],
            "repeated": summary["repeated_rate"],
            "unanswerable": summary["unanswerable_rate"],
            "rating (1-10)": summary["rating_mean"],
        }
    )
    return out


def scaling_table(scaling: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "suite": scaling["suite"],
            "budget": scaling["budget"],
            "success (mean@k ± std)": [_pm(m, s) for m, s in zip(scaling["success_mean"], scaling["success_std"])],
            "mean turns": scaling["turns_mean"],
            "rating (1-10)": scaling["rating_mean"],
        }
    )


def belief_table(curves: pd.DataFrame) -> pd.DataFrame:
    """Belief curves with solved and unsolved side by side, one row per (suite, turn)."""
    wide = curves.pivot_table(index=["suite", "turn"], columns="outcome", values=["mean", "count"])
    wide.columns = [f"{outcome} {stat}" for stat, outcome in wide.columns]
    for column in wide.columns:
        if column.endswith("count"):
            wide[column] = wide[column].astype("Int64")
    order = [c for c in ("solved mean", "solved count", "unsolved mean", "unsolved count") if c in wide.columns]
    return wide[order].reset_index()


def write_report(
    path: str | Path,
    *,
    summary: pd.DataFrame,
    scaling: pd.DataFrame,
    pass_table: pd.DataFrame,
    per_target: pd.DataFrame,
    curves: pd.DataFrame | None,
    plots: dict[str, Path],
    notes: dict[str, dict[str, Any]],
    header: dict[str, Any],
    information: pd.DataFrame | None = None,
    information_metrics: dict[str, float] | None = None,
) -> Path:
    """Write the Markdown report; plots are linked relative to the report's folder."""
    path = Path(path)
    lines = ["# Evaluation report", ""]
    lines += [f"- **{key}**: {value}" for key, value in header.items()]
    lines += ["", "## Summary (largest budget)", "", markdown_table(summary_table(summary))]
    lines += ["Success is mean@k ± std: the success rate of each of the k repeats, then their mean and "
              "standard deviation. pass@k is the unbiased estimator of Chen et al. (2021). Rates are "
              "fractions of all turns played. Rated suites (User Personalization) have no success; their "
              "budget is the number of clarifying turns and the rating is the mean 1-10 score of the final "
              "answer written after that many turns.", ""]
    lines += ["## Interaction scaling", "", markdown_table(scaling_table(scaling))]
    if not pass_table.empty:
        wide = pass_table.pivot_table(index="suite", columns="k", values="pass_at_k")
        wide.columns = [f"pass@{k}" for k in wide.columns]
        lines += ["## pass@k", "", markdown_table(wide.reset_index())]
    if curves is not None and not curves.empty:
        lines += ["## Belief per turn (mean log b_t)", "", markdown_table(belief_table(curves))]
    if information is not None and not information.empty:
        lines += ["## Information per question (exact, knowledge-base games)", "",
                  "bits_t = log2(|C_{t-1}| / |C_t|) with C_t the nouns consistent with the answers so far; "
                  "a zero-gain question learned nothing new.", ""]
        lines += [f"- **{k}**: {v:.3f}" for k, v in (information_metrics or {}).items()] + [""]
        lines += [markdown_table(information)]
    for name, plot in plots.items():
        lines += [f"### {name.replace('_', ' ')}", "", f"![{name}]({Path(plot).relative_to(path.parent)})", ""]
    lines += ["## Per-target results (largest budget)", ""]
    for suite, part in per_target.groupby("suite", sort=False):
        shown = part.drop(columns=["suite"]).head(MAX_TARGET_ROWS)
        more = f" (first {MAX_TARGET_ROWS} of {len(part)})" if len(part) > MAX_TARGET_ROWS else ""
        lines += [f"### {suite}{more}", "", markdown_table(shown)]
    lines += ["## Notes", ""]
    for suite, suite_notes in notes.items():
        lines += [f"- **{suite}**: " + "; ".join(f"{k}: {v}" for k, v in suite_notes.items())]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
