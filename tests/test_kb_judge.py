"""The kb judge answers exactly from the knowledge base; the scripted judge answers from a script."""

from __future__ import annotations

import pytest

from deltabelief.config import JudgeConfig
from deltabelief.data.knowledge_base import load_kb
from deltabelief.games.base import get_game
from deltabelief.judges.base import get_judge
from deltabelief.judges.kb import KBJudge, make_kb_judge
from deltabelief.judges.scripted import ScriptedJudge
from deltabelief.types import JudgeReply, JudgeRequest, Target


@pytest.fixture(scope="module")
def judge():
    return make_kb_judge()


def request(secret: str, move: str) -> JudgeRequest:
    """What the Twenty Questions game sends for this move (empty history)."""
    game = get_game("twenty_questions")
    state = game.new_state(Target(id=f"t-{secret}", task="twenty_questions", answer=secret))
    return game.judge_request(state, move)


TABLE = [
    # category predicates, several phrasings
    ("dog", "Is it an animal?", "yes"),
    ("dog", "Is it a kind of animal?", "yes"),
    ("dog", "Is it a living creature?", "yes"),
    ("dog", "is it a MAMMAL", "yes"),
    ("apple", "Is it an animal?", "no"),
    ("apple", "Is it a type of fruit?", "yes"),
    ("hammer", "Is it a tool?", "yes"),
    ("hammer", "Is it used to fix things?", "yes"),
    ("guitar", "Can you make music with it?", "yes"),
    ("guitar", "Is it a musical instrument?", "yes"),
    ("car", "Is it a means of transport?", "yes"),
    ("car", "Is it a piece of furniture?", "no"),
    ("oak", "Is it a living thing?", "yes"),
    ("oak", "Is it alive?", "yes"),
    ("rock", "Is it a living organism?", "no"),
    # complement predicates
    ("rock", "Is it not alive?", "yes"),
    ("rock", "Is it inanimate?", "yes"),
    ("dog", "Is it a non-living thing?", "no"),
    ("mountain", "Is it found in nature?", "yes"),
    ("chair", "Is it natural?", "no"),
    # property predicates, several phrasings
    ("elephant", "Is it bigger than a breadbox?", "yes"),
    ("elephant", "Is it larger than a breadbox?", "yes"),
    ("elephant", "Is it big?", "yes"),
    ("mouse", "Is it bigger than a breadbox?", "no"),
    ("mouse", "Is it smaller than a breadbox?", "yes"),
    ("mouse", "Can you hold it in one hand?", "yes"),
    ("eagle", "Can it fly?", "yes"),
    ("eagle", "Does it fly?", "yes"),
    ("penguin", "Is it able to fly?", "no"),
    ("penguin", "Does it have wings?", "yes"),
    ("apple", "Is it edible?", "yes"),
    ("apple", "Can you eat it?", "yes"),
    ("apple", "Is it something you can eat?", "yes"),
    ("rock", "Is it edible?", "no"),
    ("spoon", "Is it made of metal?", "yes"),
    ("spoon", "Is it metallic?", "yes"),
    ("spoon", "Is it man-made?", "yes"),
    ("spoon", "Is it made by humans?", "yes"),
    ("spoon", "Is it used in the kitchen?", "yes"),
    ("spoon", "Would you find it in the kitchen?", "yes"),
    ("sofa", "Is it found indoors?", "yes"),
    ("couch", "Is it usually found inside a home?", "yes"),
    ("table", "Does it have legs?", "yes"),
    ("snake", "Does it have legs?", "no"),
    ("bicycle", "Does it have wheels?", "yes"),
    ("boat", "Does it have wheels?", "no"),
    ("television", "Does it use electricity?", "yes"),
    ("television", "Does it need batteries or a plug?", "unanswerable"),
    ("television", "Is it electric?", "yes"),
    ("whale", "Does it live in water?", "yes"),
    ("whale", "Is it aquatic?", "yes"),
    ("pillow", "Is it soft?", "yes"),
    ("knife", "Is it sharp?", "yes"),
    ("knife", "Can it cut things?", "yes"),
    ("shirt", "Can you wear it?", "yes"),
    ("shirt", "Is it worn on the body?", "yes"),
    ("dog", "Does it eat meat?", "yes"),
    ("dog", "Is it a farm animal?", "no"),
    ("cow", "Is it a farm animal?", "yes"),
    # guesses: right, wrong, synonym, other phrasings of a guess
    ("dog", "Is it a dog?", "finished"),
    ("dog", "Is it a DOG?", "finished"),
    ("dog", "Are you thinking of a dog?", "finished"),
    ("dog", "Is it a cat?", "no"),
    ("dog", "Is the secret a wolf?", "no"),
    ("car", "Is it an automobile?", "finished"),
    ("couch", "Is it a sofa?", "finished"),
    ("automobile", "Is it a car?", "finished"),
    ("bicycle", "Is it a bike?", "finished"),
    ("bicycle", "Is it a motorbike?", "no"),
    # more than one property, gibberish, negation, comparisons, compounds
    ("dog", "Is it a large animal?", "unanswerable"),
    ("dog", "Is it a furry pet?", "unanswerable"),
    ("dog", "Is it an animal or a plant?", "unanswerable"),
    ("dog", "Is it a cat or a dog?", "unanswerable"),
    ("dog", "Is it bigger than a cat?", "unanswerable"),
    ("dog", "Isn't it a mammal?", "unanswerable"),
    ("dog", "asdf qwerty zxcv?", "unanswerable"),
    ("dog", "What is it?", "unanswerable"),
]


@pytest.mark.parametrize("secret, move, expected", TABLE)
def test_kb_judge_table(judge, secret, move, expected):
    (reply,) = judge.answer_batch([request(secret, move)])
    assert reply.label == expected
    assert reply.parsed is True and reply.raw == ""
    if expected == "unanswerable":
        assert "yes or no" in reply.text and "one property" in reply.text
    else:
        assert reply.text == ""


def test_unanswerable_message_says_why(judge):
    (several,) = judge.answer_batch([request("dog", "Is it a large animal?")])
    assert "'Is it bigger than a breadbox?', 'Is it an animal?'" in several.text
    (mention,) = judge.answer_batch([request("dog", "Is it bigger than a cat?")])
    assert "mentions 'cat'" in mention.text and "Is it a cat?" in mention.text
    assert several.details == {"kind": "unanswerable", "name": None}


def test_batch_answers_in_order_and_counts(judge):
    fresh = KBJudge(judge.kb)
    replies = fresh.answer_batch(
        [request("dog", "Is it an animal?"), request("apple", "Is it an animal?"), request("dog", "Blah blah?")]
    )
    assert [r.label for r in replies] == ["yes", "no", "unanswerable"]
    assert replies[0].details == {"kind": "predicate", "name": "animal"}
    fresh.answer_batch([request("dog", "Is it a dog?")])
    assert fresh.stats == {"calls": 4, "batches": 2, "unanswerable": 1}
    assert fresh.answer_batch([]) == []


def test_unknown_target_raises_pointing_to_llm_judges(judge):
    with pytest.raises(ValueError, match=r"'unicorn'.*--judge local or --judge openai"):
        judge.answer_batch([request("unicorn", "Is it an animal?")])


def test_other_tasks_are_refused(judge):
    req = JudgeRequest(task="murder_mystery", target=Target("m1", "murder_mystery", "story"), move="Who did it?")
    with pytest.raises(ValueError, match="murder_mystery"):
        judge.answer_batch([req])
    # Guess My City is answered from the city knowledge base; its targets are 'City, Country'
    req = JudgeRequest(task="guess_my_city", target=Target("c1", "guess_my_city", "paris"), move="Is it in Europe?")
    with pytest.raises(ValueError, match="target 'c1'.*'City, Country'"):
        judge.answer_batch([req])


def test_unanswerable_becomes_invalid_when_the_game_has_no_such_label(judge):
    req = JudgeRequest(task="twenty_questions", target=Target("t", "twenty_questions", "dog"), move="Huh?",
                       labels=("yes", "no", "invalid", "finished"))
    (reply,) = judge.answer_batch([req])
    assert reply.label == "invalid" and "yes or no" in reply.text


def test_registry_builds_the_kb_judge_with_a_noun_subset():
    tiny = get_judge("kb", config=JudgeConfig(), nouns=["dog", "cat", "apple", "car"])
    assert isinstance(tiny, KBJudge) and tiny.kb.nouns == ["dog", "cat", "apple", "car"]
    (reply,) = tiny.answer_batch([request("cat", "Is it a penguin?")])
    assert reply.label == "no"  # a known noun outside the subset is still a guess
    with pytest.raises(ValueError, match="'penguin'"):
        tiny.answer_batch([request("penguin", "Is it a bird?")])
    own = make_kb_judge(kb=load_kb(), nouns=None)
    assert len(own.kb.nouns) == len(load_kb().nouns)


# ---------------------------------------------------------------- the scripted judge


def test_scripted_judge_from_a_mapping():
    judge = get_judge("scripted", answers={"Is it alive?": "Yes", "Is it red?": ("unanswerable", "Colours vary.")})
    assert isinstance(judge, ScriptedJudge)
    replies = judge.answer_batch(
        [request("dog", "is it ALIVE"), request("dog", "Is it red?"), request("dog", "Is it big?")]
    )
    assert replies == [
        JudgeReply("yes", text="", raw="Yes", parsed=True),
        JudgeReply("unanswerable", text="Colours vary.", raw="unanswerable", parsed=True),
        JudgeReply("no", text="", raw="no", parsed=True),  # the default label
    ]
    assert [r.move for r in judge.requests] == ["is it ALIVE", "Is it red?", "Is it big?"]
    assert judge.stats == {"calls": 3, "batches": 1, "unanswerable": 1}


def test_scripted_judge_from_a_callable_and_strict_default():
    judge = ScriptedJudge(lambda req: "finished" if req.target.answer in req.move else "no")
    assert [r.label for r in judge.answer_batch([request("dog", "dog?"), request("dog", "cat?")])] == ["finished", "no"]
    strict = ScriptedJudge({"Is it alive?": "yes"}, default=None)
    with pytest.raises(KeyError, match="Is it big"):
        strict.answer_batch([request("dog", "Is it big?")])


def test_scripted_judge_unknown_label_is_unparsed_invalid():
    (reply,) = ScriptedJudge({"Is it big?": "maybe"}).answer_batch([request("dog", "Is it big?")])
    assert reply == JudgeReply("invalid", text="", raw="maybe", parsed=False)
