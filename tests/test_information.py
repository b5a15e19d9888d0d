"""Exact information per question in knowledge-base games: bits_t = log2(|C_{t-1}| / |C_t|)."""

import math
import types

import pandas as pd
import pytest

from deltabelief.data.knowledge_base import load_kb
from deltabelief.information import (
    consistent_sizes,
    information_per_turn,
    information_rows,
    question_bits,
    suite_information_metrics,
    teacher_questions_to_solve,
)

NOUNS = ["dog", "apple", "car", "chair"]  # man-made: car, chair; legs: dog, chair


@pytest.fixture(scope="module")
def kb():
    return load_kb(nouns=NOUNS)


def test_a_halving_question_gains_one_bit_and_an_implied_or_repeated_one_none(kb):
    moves = ["Is it man-made?", "Is it man-made?", "Does it have legs?", "Is it an apple?"]
    statuses = ["no", "repeated", "no", "finished"]
    assert consistent_sizes(kb, moves, statuses, "apple") == [4, 2, 2, 1, 1]
    assert question_bits(kb, moves, statuses, "apple") == [1.0, 0.0, 1.0, 0.0]


def test_a_wrong_guess_removes_one_noun_and_a_right_one_reveals_the_target(kb):
    bits = question_bits(kb, ["Is it a car?", "Is it a dog?"], ["no", "finished"], "dog")
    assert bits == pytest.approx([math.log2(4 / 3), math.log2(3)])
    assert sum(bits) == pytest.approx(math.log2(len(NOUNS)))  # a solved game gains all log2 N bits


def test_answers_that_contradict_the_target_are_refused_naming_the_turn(kb):
    with pytest.raises(ValueError, match="after turn 1"):
        question_bits(kb, ["Is it man-made?"], ["yes"], "dog")


def _game(target, moves, statuses, solved, sample=0):
    turns = [types.SimpleNamespace(move=m) for m in moves]
    return types.SimpleNamespace(target=types.SimpleNamespace(id=f"id-{target}", answer=target), turns=turns,
                                 statuses=lambda: list(statuses), solved=solved, sample_index=sample,
                                 num_turns=len(moves))


def test_per_turn_table_and_metrics_against_hand_counts(kb):
    games = [_game("apple", ["Is it man-made?", "Does it have legs?", "Is it an apple?"], ["no", "no", "finished"], True),
             _game("car", ["Is it man-made?", "Is it man-made?"], ["yes", "repeated"], False)]
    rows = pd.DataFrame(information_rows("twenty_questions", kb, games))
    assert list(rows["bits"]) == [1.0, 1.0, 0.0, 1.0, 0.0]
    assert list(rows["candidates_before"]) == [4, 2, 1, 4, 2]
    table = information_per_turn(rows)
    assert list(table["bits_mean"]) == [1.0, 0.5, 0.0] and list(table["zero_gain_share"]) == [0.0, 0.5, 1.0]
    metrics = suite_information_metrics("twenty_questions", rows, games, kb, max_turns=20)
    assert metrics["twenty_questions/bits_per_question"] == pytest.approx(3 / 5)
    assert metrics["twenty_questions/zero_gain_share"] == pytest.approx(2 / 5)
    assert metrics["twenty_questions/questions_to_solve"] == 3
    assert metrics["twenty_questions/log2_candidates"] == 2.0
    # greedy on 4 nouns: alive? then one more split, then the guess
    assert metrics["twenty_questions/teacher_questions_to_solve"] == teacher_questions_to_solve(kb, ["apple", "car"], 20)
    assert 2 <= metrics["twenty_questions/teacher_questions_to_solve"] <= 4


def test_information_is_measured_only_where_the_knowledge_base_answers_the_game(kb):
    from deltabelief.information import exact_knowledge_base
    from deltabelief.judges import get_judge

    judge = get_judge("kb", kb=kb)
    assert exact_knowledge_base(judge, "twenty_questions") is kb
    assert exact_knowledge_base(judge, "guess_my_city") is None  # answered from the city KB, other statuses
    assert exact_knowledge_base(object(), "twenty_questions") is None  # an LLM judge: no exact C_t
