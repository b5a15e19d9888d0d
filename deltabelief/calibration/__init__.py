"""Belief calibration: does the policy's belief track the evidence, and which elicitation to use.

The stage is :func:`calibrate` (:mod:`.run`); the games and scorers are in :mod:`.scoring`, the
measures in :mod:`.metrics`, the report and the chosen template in :mod:`.report`.
"""

from deltabelief.calibration.report import (
    CalibrationReport,
    choose_template,
    excluded_target_ids,
    filter_training_targets,
    load_chosen_template,
    load_report,
)
from deltabelief.calibration.run import calibrate, template_metrics
from deltabelief.calibration.scoring import BeliefScorer, CalibrationGame, ModelScorer

__all__ = [
    "BeliefScorer", "CalibrationGame", "CalibrationReport", "ModelScorer", "calibrate", "choose_template",
    "excluded_target_ids", "filter_training_targets", "load_chosen_template", "load_report", "template_metrics",
]
