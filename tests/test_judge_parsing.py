"""Judge prompts and reply parsing: hand-written raw outputs -> labels."""

import pytest

from deltabelief.games.twenty_questions import JUDGE_LABELS, TwentyQuestions
from deltabelief.judges.parsing import (
    build_messages,
    is_role_play,
    normalize_label,
    parse_reply,
    strip_reasoning,
)
from deltabelief.types import JudgeRequest, Target

TQ = ("yes", "no", "invalid", "finished", "unanswerable")
ROLE = ("answered", "goal reached", "invalid")


@pytest.mark.parametrize(
    "raw, label",
    [
        ("<answer>Yes</answer>", "yes"),
        ("<answer>No</answer> wait, actually <answer>Yes</answer>", "yes"),  # last tag wins
        ("<answer>yes</answer>\n<answer>NO</answer>", "no"),
        ("<ANSWER> Finished. </Answer>", "finished"),  # tag and label case, spaces, full stop
        ("The answer: <answer>**No!**</answer>", "no"),  # markdown and punctuation
        ("<answer>'Unanswerable'</answer>", "unanswerable"),
        ("<answer>\nYes\n</answer>", "yes"),  # newlines inside the tag
    ],
)
def test_label_from_last_answer_tag(raw, label):
    reply = parse_reply(raw, TQ)
    assert (reply.label, reply.parsed, reply.raw, reply.text) == (label, True, raw, "")


@pytest.mark.parametrize(
    "raw",
    [
        "Yes",  # no tag at all
        "",
        "<answer>Maybe</answer>",  # not one of the labels
        "<answer></answer>",
        "<answer>Yes, it is alive</answer>",  # extra words are not a label
        "<answer>Yes",  # never closed
        "<think>Clearly <answer>Yes</answer></think>",  # the only answer is inside the reasoning
        "<think>It is alive so <answer>Yes</answer>",  # unclosed reasoning: budget ran out
    ],
)
def test_unparseable_outputs_are_invalid(raw):
    reply = parse_reply(raw, TQ)
    assert (reply.label, reply.parsed, reply.raw) == ("invalid", False, raw)


def test_think_blocks_are_removed_before_parsing():
    raw = "<think>Maybe <answer>No</answer>? A cat is alive.</think>\n<answer>Yes</answer>"
    assert parse_reply(raw, TQ).label == "yes"
    # The chat template opened the block; the model only closed it.
    assert parse_reply("a cat breathes, so...</think><answer>Yes</answer>", TQ).label == "yes"
    # A draft answer after reasoning but before the final one still loses to the last tag.
    raw = "<think>hmm</think><answer>No</answer><think>no wait</think><answer>Yes</answer>"
    assert parse_reply(raw, TQ).label == "yes"


def test_strip_reasoning_forms():
    assert strip_reasoning("<think>a</think>B<THINK>c</THINK>D") == "BD"
    assert strip_reasoning("reasoning</think>final") == "final"
    assert strip_reasoning("final<think>cut off") == "final"
    assert strip_reasoning("no reasoning") == "no reasoning"


def test_labels_are_returned_lower_case_and_multi_word_labels_match():
    assert parse_reply("<answer>YES</answer>", ("Yes", "No")).label == "yes"
    assert parse_reply("<answer>Goal_Reached</answer>", ROLE).label == "goal reached"
    assert parse_reply("<answer>goal-reached.</answer>", ROLE).label == "goal reached"
    assert normalize_label(" **Goal  Reached!** ") == "goal reached"


def test_role_play_reply_keeps_the_text_outside_the_tags():
    raw = (
        "<think>The city is Lyon; they ask about rivers.</think>\n"
        "Yes, two rivers meet in my city.\nIt is lovely in spring.\n<answer>Answered</answer>"
    )
    reply = parse_reply(raw, ROLE)
    assert reply.label == "answered" and reply.parsed
    assert reply.text == "Yes, two rivers meet in my city.\nIt is lovely in spring."
    # Unparseable role-play replies keep their text; the game decides what to do.
    reply = parse_reply("I would rather not say.", ROLE)
    assert (reply.label, reply.parsed, reply.text) == ("invalid", False, "I would rather not say.")
    # Label-only games never return text.
    assert parse_reply("It is alive. <answer>Yes</answer>", TQ).text == ""


def test_role_play_detection():
    assert is_role_play(ROLE)
    assert is_role_play(("Answered", "invalid"))
    assert not is_role_play(TQ)


def test_parse_reply_needs_labels():
    with pytest.raises(ValueError, match="at least one label"):
        parse_reply("<answer>Yes</answer>", ())


def _request(**changes):
    fields = dict(
        task="twenty_questions",
        target=Target("t1", "twenty_questions", "cat"),
        move="  Is it alive?  ",
        history=(("Is it big?", "No."), ("Is it a tool?", "No.")),
        instructions="You answer for the secret 'cat'.",
        labels=TQ,
    )
    fields.update(changes)
    return JudgeRequest(**fields)


def test_build_messages_label_only():
    system, user = build_messages(_request())
    assert system == {"role": "system", "content": "You answer for the secret 'cat'."}
    assert user["role"] == "user"
    content = user["content"]
    assert "Turn 1\n  Questioner: Is it big?\n  You: No." in content
    assert "Turn 2\n  Questioner: Is it a tool?\n  You: No." in content
    assert "Latest move from the questioner:\nIs it alive?\n" in content
    assert "Yes, No, Invalid, Finished, Unanswerable" in content
    assert "<answer>Yes</answer>" in content
    # The earlier turns come before the latest move.
    assert content.index("Is it a tool?") < content.index("Is it alive?")


def test_build_messages_first_turn_and_role_play():
    _, user = build_messages(_request(history=()))
    assert "(no earlier turns)" in user["content"]
    _, user = build_messages(_request(labels=ROLE))
    assert "staying in your role" in user["content"]
    assert "Answered, Goal reached, Invalid" in user["content"]


def test_build_messages_refuses_requests_an_llm_cannot_answer():
    with pytest.raises(ValueError, match="twenty_questions.*no instructions"):
        build_messages(_request(instructions="  "))
    with pytest.raises(ValueError, match="no labels"):
        build_messages(_request(labels=()))


def test_build_messages_for_a_twenty_questions_request():
    game = TwentyQuestions()
    state = game.new_state(Target("t1", "twenty_questions", "cat"))
    system, user = build_messages(game.judge_request(state, "Is it alive?"))
    assert "'cat'" in system["content"]
    assert "Is it alive?" in user["content"]
    assert parse_reply("<answer>Finished</answer>", JUDGE_LABELS).label == "finished"
