"""Evaluation: suites (ID + OOD games), metrics, interaction scaling, plots and a report.

The stage is :func:`evaluate` (:mod:`.run`); the suites are in :mod:`.suites`, the metrics in
:mod:`.metrics` and :mod:`.scaling`, the plots in :mod:`.plots`, the report in :mod:`.report`.
"""

from deltabelief.evaluation.metrics import mean_at_k, pass_at_k
from deltabelief.evaluation.run import EvalResult, evaluate, evaluate_model
from deltabelief.evaluation.scaling import RESULT_COLUMNS
from deltabelief.evaluation.suites import SUITES

__all__ = ["EvalResult", "evaluate", "evaluate_model", "mean_at_k", "pass_at_k", "SUITES", "RESULT_COLUMNS"]
