"""Every rule of the Twenty Questions game, played through play_moves with the kb and scripted judges."""

from __future__ import annotations

import pytest

from deltabelief.config import GameConfig
from deltabelief.games.base import GameRecord, build_game, get_game, play_moves
from deltabelief.games.twenty_questions import (
    FIRST_PROMPT,
    INVALID_MESSAGE,
    JUDGE_LABELS,
    REPEATED_MESSAGE,
    UNANSWERABLE_MESSAGE,
    TwentyQuestions,
    names_target,
    normalize_move,
)
from deltabelief.judges.kb import make_kb_judge
from deltabelief.judges.scripted import ScriptedJudge
from deltabelief.types import Target


@pytest.fixture(scope="module")
def kb_judge():
    return make_kb_judge()


def new_game(secret: str = "dog", max_turns: int = 20, **kwargs):
    game = get_game("twenty_questions", max_turns=max_turns, **kwargs)
    return game, game.new_state(Target(id=f"t-{secret}", task="twenty_questions", answer=secret))


def play(game, judge, state, *moves):
    """Play moves one by one; return the (status, text) of each."""
    return [(r.status, r.text) for m in moves for r in play_moves(game, judge, [state], [m])]


# ---------------------------------------------------------------- rule 1: invalid


@pytest.mark.parametrize(
    "move",
    [
        "Is it an animal",  # no question mark
        "Is it an animal? Is it a dog?",  # two questions
        "Is it alive?!",  # does not end with '?'
        "Dog?",  # 4 characters < 8
        "Is it a " + "very " * 40 + "big thing?",  # 217 characters > 200
        "   ",
    ],
)
def test_invalid_moves_never_reach_the_judge(move):
    judge = ScriptedJudge(default="yes")
    game, state = new_game()
    assert play(game, judge, state, move) == [("invalid", INVALID_MESSAGE)]
    assert judge.requests == []
    assert state.num_turns == 1 and not state.done and not state.solved


def test_length_limits_are_inclusive():
    judge = ScriptedJudge(default="yes")
    game, state = new_game()
    shortest = "Big one?"  # 8 characters
    longest = "Is it " + "x" * 193 + "?"  # 200 characters
    assert (len(shortest), len(longest)) == (8, 200)
    assert play(game, judge, state, shortest, longest, "Big on?") == [
        ("yes", "Yes."), ("yes", "Yes."), ("invalid", INVALID_MESSAGE)
    ]
    assert [r.move for r in judge.requests] == [shortest, longest]
    # surrounding whitespace is ignored for the checks and stripped before the judge sees the move
    judge2 = ScriptedJudge(default="no")
    game2, state2 = new_game()
    assert play(game2, judge2, state2, "   Is it an animal?   ") == [("no", "No.")]
    assert judge2.requests[0].move == "Is it an animal?"


def test_custom_length_limits():
    game, state = new_game(min_question_chars=20, max_question_chars=30)
    judge = ScriptedJudge(default="no")
    results = play(game, judge, state, "Is it an animal?", "Is it bigger than a breadbox?")
    assert [s for s, _ in results] == ["invalid", "no"]


# ---------------------------------------------------------------- rule 2: repeated


def test_repeats_ignore_case_spacing_and_punctuation(kb_judge):
    game, state = new_game("dog")
    moves = ("Is it an animal?", "is it an ANIMAL ?", "Is it,  an animal?", "Is it a mammal?")
    results = play(game, kb_judge, state, *moves)
    assert results == [("yes", "Yes."), ("repeated", REPEATED_MESSAGE), ("repeated", REPEATED_MESSAGE), ("yes", "Yes.")]
    assert kb_judge.kb.parse("Is it,  an animal?").name == "animal"
    assert normalize_move("Is it,  an ANIMAL?") == "is it an animal"
    assert state.num_turns == 4  # repeats use a turn


def test_a_repeat_does_not_call_the_judge():
    judge = ScriptedJudge(default="no")
    game, state = new_game()
    play(game, judge, state, "Is it an animal?", "Is it an animal?")
    assert len(judge.requests) == 1
    assert judge.requests[0].history == ()


def test_correcting_an_invalid_move_is_not_a_repeat(kb_judge):
    game, state = new_game("dog")
    results = play(game, kb_judge, state, "Is it an animal", "Is it an animal?")
    assert [status for status, _ in results] == ["invalid", "yes"]  # the first was never answered


# ---------------------------------------------------------------- rule 3: the secret named


def test_naming_the_secret_as_a_whole_word_finishes():
    judge = ScriptedJudge(default="no")
    game, state = new_game("cat")
    assert play(game, judge, state, "Is it a CAT?") == [("finished", "Yes! You found it: the answer is 'cat'.")]
    assert judge.requests == []  # decided without the judge
    assert state.done and state.solved
    record = GameRecord.from_state(state)
    assert record.solved and [t.status for t in record.turns] == ["finished"]


def test_the_secret_inside_another_word_is_not_named(kb_judge):
    game, state = new_game("cat")
    results = play(game, kb_judge, state, "Is it a category of tool?", "Is it a caterpillar?")
    # 'category of tool' asks about tools (no); 'caterpillar' is not a KB noun and names no property
    assert [s for s, _ in results] == ["no", "unanswerable"]
    assert not names_target("Is it a category of tool?", "cat")
    assert not state.done


def test_multi_word_secret_is_named_across_punctuation():
    game, state = new_game("ice cream")
    assert play(game, ScriptedJudge(), state, "Is it ice-cream?")[0][0] == "finished"
    assert names_target("Is it ICE  cream?", "ice cream")
    assert not names_target("Is it ice?", "ice cream")


# ---------------------------------------------------------------- rule 4: judge corrections


def test_judge_finished_without_the_secret_named_becomes_yes():
    judge = ScriptedJudge({"Is it a feline?": "finished"})
    game, state = new_game("cat")
    assert play(game, judge, state, "Is it a feline?") == [("yes", "Yes.")]
    assert not state.done and not state.solved


def test_kb_judge_guess_of_a_synonym_solves(kb_judge):
    assert kb_judge.kb.parse("Is it an automobile?").name == "car"
    game, state = new_game("car")
    assert play(game, kb_judge, state, "Is it an automobile?")[0][0] == "finished"
    assert state.solved and state.done


def test_unparseable_judge_reply_is_invalid():
    judge = ScriptedJudge({"Is it alive?": "maybe"})
    game, state = new_game()
    assert play(game, judge, state, "Is it alive?") == [("invalid", INVALID_MESSAGE)]
    assert not state.done


def test_judge_invalid_and_unanswerable_get_their_messages(kb_judge):
    judge = ScriptedJudge({"Is it red?": "unanswerable", "Is it nice?": ("unanswerable", "Too vague."),
                           "Is it so?": "invalid"})
    game, state = new_game()
    assert play(game, judge, state, "Is it red?", "Is it nice?", "Is it so?") == [
        ("unanswerable", UNANSWERABLE_MESSAGE), ("unanswerable", "Too vague."), ("invalid", INVALID_MESSAGE)
    ]
    game, state = new_game("dog")
    ((status, text),) = play(game, kb_judge, state, "Is it a large animal?")
    assert status == "unanswerable" and "several properties" in text


def test_the_judge_sees_the_rules_target_and_history():
    judge = ScriptedJudge(default="no")
    game, state = new_game("dog")
    play(game, judge, state, "Is it a plant?", "Is it a mineral?")
    first, second = judge.requests
    assert first.task == "twenty_questions" and first.labels == JUDGE_LABELS
    assert "'dog'" in first.instructions and first.target.answer == "dog"
    assert second.history == (("Is it a plant?", "No."),)


# ---------------------------------------------------------------- whole games


def test_a_full_game_with_the_kb_judge(kb_judge):
    game, state = new_game("dog")
    moves = ("Is it an animal?", "Is it a mammal?", "Can it fly?", "Is it a cat?", "Is it a dog?")
    results = play(game, kb_judge, state, *moves)
    assert [s for s, _ in results] == ["yes", "yes", "no", "no", "finished"]
    assert state.done and state.solved and state.num_turns == 5
    assert state.history()[2] == ("Can it fly?", "No.")


def test_max_turns_ends_the_game_and_later_moves_raise():
    judge = ScriptedJudge(default="no")
    game, state = new_game(max_turns=3)
    play(game, judge, state, "Is it an animal?", "Bad move", "Is it an animal?")  # no, invalid, repeated
    assert state.num_turns == 3 and state.done and not state.solved
    with pytest.raises(RuntimeError, match="t-dog"):
        play_moves(game, judge, [state], ["Is it a plant?"])
    assert state.num_turns == 3


def test_moves_after_a_win_raise():
    game, state = new_game("dog")
    play(game, ScriptedJudge(), state, "Is it a dog?")
    with pytest.raises(RuntimeError, match="over"):
        play_moves(game, ScriptedJudge(), [state], ["Is it a cat?"])


def test_play_moves_batches_only_the_moves_that_need_the_judge(kb_judge):
    game = get_game("twenty_questions")
    targets = [Target(id=f"t{i}", task="twenty_questions", answer=s) for i, s in enumerate(["dog", "apple", "car"])]
    states = [game.new_state(t) for t in targets]
    judge = ScriptedJudge(lambda req: "yes" if req.target.answer == "dog" else "no")
    results = play_moves(game, judge, states, ["Is it an animal?", "no question", "Is it a car?"])
    assert [r.status for r in results] == ["yes", "invalid", "finished"]
    assert [r.move for r in judge.requests] == ["Is it an animal?"]
    assert judge.stats["batches"] == 1
    with pytest.raises(ValueError, match="3 games but 2 moves"):
        play_moves(game, judge, states, ["a?", "b?"])


# ---------------------------------------------------------------- set-up


def test_opening_messages_are_the_games_own_unless_the_target_brings_some():
    game, state = new_game(max_turns=7)
    system, user = game.opening_messages(state.target)
    assert system["role"] == "system" and "7 questions" in system["content"]
    assert user == {"role": "user", "content": FIRST_PROMPT}
    shipped = ({"role": "system", "content": "Reference system prompt."}, {"role": "user", "content": "Ask away."})
    target = Target(id="r1", task="twenty_questions", answer="ability", messages=shipped)
    messages = game.opening_messages(target)
    assert messages == [dict(m) for m in shipped]
    messages[0]["content"] = "changed"
    assert target.messages[0]["content"] == "Reference system prompt."  # a copy


def test_the_prompt_lists_the_worlds_nouns_only_when_asked():
    cat = Target(id="cat", task="twenty_questions", answer="cat")
    listed = build_game(GameConfig(kb_nouns=["cat", "vacuum cleaner", "apple"], candidates_in_prompt=True))
    system = listed.opening_messages(cat)[0]["content"]
    assert system.endswith("The secret is one of these 3 things: apple, cat, vacuum cleaner.")
    plain = build_game(GameConfig(kb_nouns=["cat", "apple"]))
    assert "one of these" not in plain.opening_messages(cat)[0]["content"]


def test_game_construction():
    assert isinstance(get_game("twenty_questions"), TwentyQuestions)
    assert get_game("twenty_questions").max_turns == 20
    with pytest.raises(ValueError, match="max_turns"):
        TwentyQuestions(max_turns=0)
