"""User Personalization, following the STaR-GATE protocol (Andukuri et al., 2024).

A persona × task pair is one target: ``target.answer`` is the user's request
(the task) and ``extra['persona']`` describes the user, who is role-played by the
judge. For ``max_turns`` turns (3 in the protocol) the agent asks one clarifying
question and the role-played user answers from the persona. After each turn t
the agent writes its final answer to the request from the conversation so far
(:func:`final_answer_messages`), and a rater model scores it 1–10 with the rubric
below (:func:`rating_request`, :func:`parse_rating`). There is no 'goal reached':
every game runs all its turns.

Rules on top of :mod:`deltabelief.games.role_play`: a move must be exactly one
question (one '?'); repeats are ``repeated``.

:func:`load_star_gate` reads the STaR-GATE test files (10 personas × 50 tasks).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Callable, Sequence

from deltabelief.games.base import register_game
from deltabelief.games.role_play import ANSWERED, RolePlayGame, require_field
from deltabelief.types import Judge, JudgeReply, JudgeRequest, Message, Target

log = logging.getLogger(__name__)

NAME = "personalization"
RATING_TASK = "personalization_rating"
RATING_LABELS = tuple(str(i) for i in range(1, 11))

SYSTEM_PROMPT = (
    "You are a helpful assistant. Before you answer the user's request, you may ask the user "
    "clarifying questions to learn what would suit them best. Ask exactly one short question per "
    "turn and do not answer the request yet. Reply with your question only."
)
FINAL_PROMPT = (
    "Thanks for your questions. Now please give me your final answer to my original request: "
    "{task}\nMake it fit what you have learned about me."
)

USER_PROMPT = (
    "You are role-playing a person talking to an AI assistant. This is who you are:\n{persona}\n"
    "You asked the assistant: \"{task}\"\n"
    "The assistant is asking you clarifying questions before it answers.\n"
    "How to reply:\n"
    "- Answer the latest question in the first person, in one to three sentences, as this person "
    "would.\n"
    "- Use details that fit the description; where it says nothing, answer in a way that suits "
    "this person's character and situation.\n"
    "- Do not ask the assistant questions and do not answer your own request.\n"
    "Label every reply Answered."
)

RATING_RUBRIC = (
    "You rate how well an AI assistant's answer serves one specific user.\n"
    "The user:\n{persona}\n"
    "The user's request: \"{task}\"\n"
    "{reference_block}"
    "The latest move in the conversation is the assistant's final answer. Score it from 1 to 10:\n"
    "- 9-10: correct and useful, and clearly tailored to this user's situation, tastes and needs.\n"
    "- 7-8: correct and useful, with some tailoring to this user.\n"
    "- 5-6: a reasonable generic answer that ignores who the user is.\n"
    "- 3-4: partly wrong, vague, or a poor fit for this user.\n"
    "- 1-2: does not answer the request (for example it only asks another question), or is "
    "wrong or harmful.\n"
    "Give the score as a single number inside <answer></answer>, for example <answer>6</answer>."
)
REFERENCE_BLOCK = "For comparison, a strong answer for this user:\n{reference}\n"


class Personalization(RolePlayGame):
    name = NAME
    judge_labels = (ANSWERED,)
    require_question = True

    def __init__(self, max_turns: int = 3, max_move_chars: int = 400):
        super().__init__(max_turns=max_turns, max_move_chars=max_move_chars)

    def validate_target(self, target: Target) -> None:
        super().validate_target(target)
        require_field(target, "persona")

    def own_opening_messages(self, target: Target) -> list[Message]:
        return [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": target.answer.strip()},
        ]

    def judge_instructions(self, target: Target) -> str:
        return USER_PROMPT.format(persona=require_field(target, "persona"), task=target.answer.strip())


@register_game(NAME)
def make_personalization(max_turns: int = 3, max_move_chars: int = 400) -> Personalization:
    return Personalization(max_turns=max_turns, max_move_chars=max_move_chars)


# ---------------------------------------------------------------- final answers and ratings


def final_answer_messages(
    game: Personalization, target: Target, history: list[tuple[str, str]], num_turns: int
) -> list[Message]:
    """The conversation after ``num_turns`` turns, ending with a request for the final answer.

    ``history``: the game's (move, answer) pairs. The final request is merged into the
    last user message so roles keep alternating.
    """
    if not 0 <= num_turns <= len(history):
        raise ValueError(f"target {target.id!r}: asked for {num_turns} turns but the game has {len(history)}")
    messages = game.opening_messages(target)
    for move, answer in history[:num_turns]:
        messages.append({"role": "assistant", "content": move})
        messages.append({"role": "user", "content": answer})
    final = FINAL_PROMPT.format(task=target.answer.strip())
    messages[-1] = {"role": "user", "content": f"{messages[-1]['content']}\n\n{final}"}
    return messages


def rating_request(target: Target, answer: str, history: tuple[tuple[str, str], ...] = ()) -> JudgeRequest:
    """A request for the rater: score ``answer`` 1–10 for this persona and task."""
    reference = target.extra.get("gold_response")
    block = REFERENCE_BLOCK.format(reference=reference.strip()) if isinstance(reference, str) and reference.strip() else ""
    instructions = RATING_RUBRIC.format(
        persona=require_field(target, "persona"), task=target.answer.strip(), reference_block=block
    )
    return JudgeRequest(
        task=RATING_TASK, target=target, move=answer.strip() or "(empty answer)", history=history,
        instructions=instructions, labels=RATING_LABELS,
    )


def parse_rating(reply: JudgeReply) -> float:
    """The rating as a float in [1, 10]; NaN when the rater's reply had no valid score."""
    if not reply.parsed or reply.label not in RATING_LABELS:
        return math.nan
    return float(reply.label)


AnswerFn = Callable[[list[list[Message]]], list[str]]
"""Writes the agent's final answer for each conversation (the policy, in evaluation)."""


def rate_final_answers(
    game: Personalization, rater: Judge, games: Sequence[Any], answer_fn: AnswerFn
) -> tuple[list[list[str]], list[list[float]]]:
    """After each turn t = 1..N of every game, write the final answer and rate it.

    ``games``: played games with ``.target`` and ``.turns`` (each with ``.move``/``.answer``),
    e.g. :class:`~deltabelief.trajectory.Trajectory`. All answers are written in one
    ``answer_fn`` call and rated in one ``rater.answer_batch`` call.

    Returns:
        (answers, ratings): per game, N answers and N ratings (NaN where the rater's reply
        had no valid score).
    """
    conversations, requests, sizes = [], [], []
    for played in games:
        history = [(turn.move, turn.answer) for turn in played.turns]
        sizes.append(len(history))
        for num_turns in range(1, len(history) + 1):
            conversations.append(final_answer_messages(game, played.target, history, num_turns))
    answers = answer_fn(conversations) if conversations else []
    if len(answers) != len(conversations):
        raise ValueError(f"answer_fn returned {len(answers)} answers for {len(conversations)} conversations")
    position = 0
    for played, size in zip(games, sizes):
        for answer in answers[position : position + size]:
            requests.append(rating_request(played.target, answer))
        position += size
    ratings = [parse_rating(reply) for reply in rater.answer_batch(requests)] if requests else []
    out_answers, out_ratings, position = [], [], 0
    for size in sizes:
        out_answers.append(list(answers[position : position + size]))
        out_ratings.append(list(ratings[position : position + size]))
        position += size
    return out_answers, out_ratings


# ---------------------------------------------------------------- STaR-GATE data


def _load_json(path: Path, kind: type):
    if not path.exists():
        raise FileNotFoundError(f"STaR-GATE file missing: {path}")
    data = json.loads(path.read_text())
    if not isinstance(data, kind):
        raise ValueError(f"{path}: expected a JSON {kind.__name__}, got {type(data).__name__}")
    return data


def _check_text(value, what: str, where: Path) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where}: {what} must be a non-empty string, got {value!r}")
    return value.strip()


def load_star_gate(directory: str | Path) -> list[Target]:
    """Persona × task targets from the STaR-GATE test files, ids ``'prompt-i persona-j'``.

    Reads ``personas_test.json`` (list of descriptions), ``personas_test_NAMES.json``
    (names, same order), ``prompts_test.json`` (tasks) and ``gold-responses_test.json``
    (``{"prompt-i persona-j": [response]}``, optional per pair; an empty response means none,
    and pairs without one are logged). A malformed entry raises an error naming the file and
    the entry's id.
    """
    root = Path(directory)
    personas = _load_json(root / "personas_test.json", list)
    names = _load_json(root / "personas_test_NAMES.json", list)
    tasks = _load_json(root / "prompts_test.json", list)
    gold_path = root / "gold-responses_test.json"
    gold = _load_json(gold_path, dict) if gold_path.exists() else {}
    if len(names) != len(personas):
        raise ValueError(f"{root}: {len(personas)} personas but {len(names)} names")
    targets, no_gold = [], []
    for j, persona in enumerate(personas):
        persona = _check_text(persona, f"persona-{j}", root / "personas_test.json")
        name = _check_text(names[j], f"name of persona-{j}", root / "personas_test_NAMES.json")
        for i, task in enumerate(tasks):
            task = _check_text(task, f"prompt-{i}", root / "prompts_test.json")
            pair = f"prompt-{i} persona-{j}"
            extra = {"persona": persona, "persona_name": name}
            if pair in gold:
                responses = gold[pair]
                if not isinstance(responses, list) or not responses or not isinstance(responses[0], str):
                    raise ValueError(f"{gold_path}: {pair!r} must be a non-empty list of response strings")
                if responses[0].strip():
                    extra["gold_response"] = responses[0].strip()
            if "gold_response" not in extra:
                no_gold.append(pair)
            targets.append(Target(id=pair, task=NAME, answer=task, extra=extra))
    if no_gold:
        log.warning("%d STaR-GATE pair(s) have no gold response; rated without a reference answer: %s",
                    len(no_gold), no_gold[:10])
    return targets
