"""The promotion gate's statistics: paired bootstrap bound over targets."""

from __future__ import annotations

import pandas as pd
import pytest

from deltabelief.gate import paired_gate, promotion_rate, target_scores


def test_a_candidate_equal_to_the_champion_plus_noise_is_promoted_in_at_most_5_percent_of_trials():
    rate = promotion_rate(0.0, trials=400, num_targets=16, samples=4, level=0.95)
    assert rate <= 0.05


def test_a_clearly_better_candidate_is_promoted():
    assert promotion_rate(0.4, trials=100, num_targets=16, samples=4, level=0.95) >= 0.95


def test_the_bound_must_clear_the_margin_not_just_zero():
    champion = {f"t{i}": 0.25 for i in range(16)}
    candidate = {f"t{i}": 0.25 + (0.25 if i % 2 else 0.0) for i in range(16)}  # +0.125 on average
    assert paired_gate(candidate, champion, margin=0.0, level=0.95, resamples=2000).passed
    result = paired_gate(candidate, champion, margin=0.1, level=0.95, resamples=2000)
    assert not result.passed and result.improvement == pytest.approx(0.125) and result.lower_bound < 0.1


def test_an_identical_candidate_is_not_promoted():
    scores = {f"t{i}": i / 16 for i in range(16)}
    result = paired_gate(dict(scores), scores, margin=0.0, level=0.95, resamples=500)
    assert not result.passed and result.lower_bound == 0.0


def test_scores_on_different_targets_are_refused_naming_them():
    with pytest.raises(ValueError, match=r"only the candidate: \['c'\]; only the champion: \['b'\]"):
        paired_gate({"a": 1.0, "c": 0.0}, {"a": 0.0, "b": 1.0}, margin=0.0, level=0.95, resamples=500)


def test_per_target_scores_come_from_the_gate_metrics_suite():
    table = pd.DataFrame({
        "suite": ["twenty_questions", "twenty_questions", "guess_my_city"],
        "target_id": ["dog", "car", "paris"],
        "success_rate": [0.5, 1.0, 0.0],
        "rating_mean": [None, None, None],
        "turns_mean": [3.0, 2.0, 5.0],
    })
    assert target_scores(table, "twenty_questions/success_mean") == {"dog": 0.5, "car": 1.0}
    with pytest.raises(ValueError, match="no per-target form"):
        target_scores(table, "twenty_questions/pass@1")
    with pytest.raises(ValueError, match="'murder_mystery' is not in the evaluation"):
        target_scores(table, "murder_mystery/success_mean")


def test_the_prompt_list_is_part_of_the_suite_signature_and_training_settings_are_not():
    from deltabelief.config import load_config
    from deltabelief.pipeline import suite_signature

    listed = load_config("cpu")
    plain = load_config("cpu", ["game.candidates_in_prompt=false"])
    assert suite_signature(listed) != suite_signature(plain)
    longer = load_config("cpu", ["game.candidates_in_prompt=false", "sft.epochs=9"])
    assert suite_signature(plain) == suite_signature(longer)
