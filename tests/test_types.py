"""Shared types: a target's answer, under its name and its old one."""

import pytest

from deltabelief.types import Target


def test_a_target_keeps_its_answer_and_accepts_the_old_field_name_with_a_warning():
    target = Target("t1", "twenty_questions", "cat", {"aliases": []})
    assert (target.id, target.task, target.answer, target.extra, target.messages) == (
        "t1", "twenty_questions", "cat", {"aliases": []}, ())
    with pytest.warns(DeprecationWarning, match="now 'answer'"):
        old = Target(id="t1", task="twenty_questions", target="cat", extra={"aliases": []})
    assert old == target
    with pytest.raises(TypeError, match="not both"):
        Target(id="t1", task="twenty_questions", answer="cat", target="cat")
    with pytest.raises(TypeError, match="needs its answer"):
        Target(id="t1", task="twenty_questions")
