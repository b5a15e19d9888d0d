"""Teachers and the exact posterior: hand-computed on a four-noun toy, then on the real KB."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
import pytest

from deltabelief.data.knowledge_base import load_kb
from deltabelief.data.teachers import (
    GreedyTeacher,
    NoisyTeacher,
    consistent_nouns,
    exact_log_posterior,
    make_teacher,
    play_teacher_games,
    split_entropy,
)
from deltabelief.games.base import get_game
from deltabelief.judges import get_judge
from deltabelief.types import Target


@dataclass(frozen=True)
class ToyPredicate:
    name: str
    question: str


class ToyKB:
    """ant, bee, cow, owl with three predicates; enough to follow the teacher by hand."""

    nouns = ["ant", "bee", "cow", "owl"]
    predicates = [
        ToyPredicate("flies", "Can it fly?"),  # bee, owl
        ToyPredicate("big", "Is it bigger than a cat?"),  # cow
        ToyPredicate("insect", "Is it an insect?"),  # ant, bee
    ]
    facts = {"flies": {"bee", "owl"}, "big": {"cow"}, "insect": {"ant", "bee"}}

    def holds(self, noun, predicate):
        return noun in self.facts[predicate]  # by predicate name, as KnowledgeBase.holds

    def guess_question(self, noun):
        return f"Is it a {noun}?"

    def consistent(self, history, nouns=None):
        out = []
        for noun in nouns or self.nouns:
            ok = True
            for move, status in history:
                for p in self.predicates:
                    if move == p.question and status in ("yes", "no"):
                        ok &= self.holds(noun, p.name) == (status == "yes")
                if move.startswith("Is it a ") and status == "no":
                    ok &= move != self.guess_question(noun)
            if ok:
                out.append(noun)
        return out


def test_split_entropy_by_hand():
    # p = 0, 1/4, 1/2, 1: H = 0, -(1/4 log2 1/4 + 3/4 log2 3/4) = 0.811278, 1, 0.
    assert split_entropy(np.array([0, 1, 2, 4]), 4) == pytest.approx([0.0, 0.8112781, 1.0, 0.0])


def test_greedy_follows_the_highest_entropy_split():
    kb, teacher, rng = ToyKB(), GreedyTeacher(ToyKB()), random.Random(0)
    # All four: flies 2/4 (H=1), big 1/4 (H=0.81), insect 2/4 (H=1) -> the first maximum, flies.
    assert teacher.next_move(kb.nouns, rng) == "Can it fly?"
    # bee, owl: flies 2/2 (H=0), big 0/2 (H=0), insect 1/2 (H=1).
    assert teacher.next_move(["bee", "owl"], rng) == "Is it an insect?"
    assert teacher.next_move(["owl"], rng) == "Is it a owl?"
    # ant, cow differ only in big and insect: big comes first in KB order.
    assert teacher.next_move(["ant", "cow"], rng) == "Is it bigger than a cat?"
    # On the last turn a question can no longer win: guess the first noun left.
    assert teacher.next_move(["ant", "cow"], rng, turns_left=1) == "Is it a ant?"


def test_greedy_guesses_when_no_predicate_splits():
    class Twins(ToyKB):
        facts = {"flies": {"bee", "owl"}, "big": set(), "insect": {"bee", "owl"}}

    assert GreedyTeacher(Twins()).next_move(["bee", "owl"], random.Random(0)) == "Is it a bee?"


def test_exact_log_posterior_by_hand():
    kb = ToyKB()
    moves = ["Can it fly?", "Is it a bee?", "Is it a owl?"]
    statuses = ["yes", "no", "finished"]
    # C_0 = 4 nouns, C_1 = {bee, owl}, C_2 = {owl}, C_3 = {owl} (found).
    assert exact_log_posterior(kb, moves, statuses, "owl") == pytest.approx(
        [-math.log(4), -math.log(2), 0.0, 0.0]
    )
    assert consistent_nouns(kb, moves[:1], statuses[:1], "owl") == ["bee", "owl"]
    with pytest.raises(ValueError, match="inconsistent with its own answers after turn 1"):
        exact_log_posterior(kb, moves[:1], ["no"], "owl")


def test_noisy_teacher_with_zero_noise_is_greedy_and_with_full_noise_is_random():
    kb = ToyKB()
    greedy, rng = GreedyTeacher(kb), random.Random(5)
    assert NoisyTeacher(kb, 0.0).next_move(kb.nouns, rng) == greedy.next_move(kb.nouns, rng)
    questions = {p.question for p in kb.predicates}
    moves = [NoisyTeacher(kb, 1.0).next_move(["owl"], rng) for _ in range(30)]
    assert set(moves) <= questions and len(set(moves)) == 3  # never the guess, all predicates drawn
    with pytest.raises(ValueError, match=r"noise_epsilon must be in \[0, 1\]"):
        NoisyTeacher(kb, 1.5)
    with pytest.raises(KeyError, match="unknown teacher 'oracle'"):
        make_teacher("oracle", kb)


# ---------------------------------------------------------------- the real knowledge base


def _play(teacher_name: str, epsilon: float = 0.3, max_turns: int = 20, seed: int = 0):
    kb = load_kb()
    targets = [Target(id=f"t{i}", task="twenty_questions", answer=n) for i, n in enumerate(kb.nouns)]
    game = get_game("twenty_questions", max_turns=max_turns)
    games = play_teacher_games(
        make_teacher(teacher_name, kb, epsilon), targets, game, get_judge("kb"), kb, random.Random(seed)
    )
    return kb, games


def test_greedy_solves_every_kb_noun_within_20_turns_near_log2():
    kb, games = _play("greedy")
    assert len(games) == len(kb.nouns)
    unsolved = [g.state.target.answer for g in games if not g.state.solved]
    assert unsolved == []
    turns = [g.state.num_turns for g in games]
    assert max(turns) <= 20
    bound = 1.5 * (math.log2(len(kb.nouns)) + 1)
    assert sum(turns) / len(turns) <= bound
    for g in games:
        assert set(g.statuses) <= {"yes", "no", "finished"}  # never invalid, repeated or unanswerable
        assert len(g.log_posterior) == g.state.num_turns + 1 and g.log_posterior[-1] == 0.0
        assert all(b >= a for a, b in zip(g.log_posterior, g.log_posterior[1:]))


def test_noisy_teacher_repeats_get_the_repeated_status_and_cost_turns():
    kb, greedy = _play("greedy")
    _, noisy = _play("noisy", epsilon=0.5, seed=3)
    mean = lambda gs: sum(g.state.num_turns for g in gs) / len(gs)  # noqa: E731
    assert mean(noisy) > mean(greedy)
    repeats = 0
    for g in noisy:
        for t, (move, status) in enumerate(zip(g.moves, g.statuses)):
            if move in g.moves[:t]:
                assert status == "repeated"
                repeats += 1
    assert repeats > 0


def test_guess_below_guesses_the_last_few_nouns_in_a_random_order_and_still_solves():
    kb = load_kb()
    game = get_game("twenty_questions", max_turns=20)
    judge = get_judge("kb", kb=kb)
    targets = [Target(id=n, task="twenty_questions", answer=n) for n in kb.nouns]
    games = play_teacher_games(GreedyTeacher(kb, guess_below=4), targets, game, judge, kb, random.Random(0))
    assert all(g.state.solved for g in games)
    wrong = [(g.state.target.answer, m) for g in games for m, s in zip(g.moves, g.statuses)
             if s == "no" and kb.parse(m).kind == "guess"]
    assert wrong  # failed guesses of other nouns: what lets an imitator reach held-out targets
    for g in games:
        first_guess = next(t for t, m in enumerate(g.moves) if kb.parse(m).kind == "guess")
        left = consistent_nouns(kb, g.moves[:first_guess], g.statuses[:first_guess], g.state.target.answer)
        assert 1 <= len(left) <= 4  # it stopped splitting only once at most 4 nouns remained
        assert all(kb.parse(m).kind == "guess" for m in g.moves[first_guess:])  # then only guesses
    orders = {tuple(g.moves) for seed in range(6)
              for g in play_teacher_games(GreedyTeacher(kb, guess_below=4), targets[:1], game, judge, kb,
                                          random.Random(seed))}
    assert len(orders) > 1  # the guessing order is drawn, not fixed
    with pytest.raises(ValueError, match="guess_below"):
        GreedyTeacher(kb, guess_below=0)


def test_repeat_epsilon_re_asks_an_answered_question_and_the_game_calls_it_repeated():
    kb = load_kb()
    game = get_game("twenty_questions", max_turns=20)
    targets = [Target(id=n, task="twenty_questions", answer=n) for n in kb.nouns[:40]]
    games = play_teacher_games(GreedyTeacher(kb, guess_below=4), targets, game, get_judge("kb", kb=kb), kb,
                               random.Random(0), repeat_epsilon=0.3)
    repeats = [(g, t) for g in games for t, s in enumerate(g.statuses) if s == "repeated"]
    assert repeats and all(g.moves[t] in g.moves[:t] for g, t in repeats)
    assert all(g.state.solved for g in games)  # a repeat costs a turn, never the game here
    with pytest.raises(ValueError, match="repeat_epsilon"):
        play_teacher_games(GreedyTeacher(kb), targets, game, get_judge("kb", kb=kb), kb, random.Random(0), 1.0)
