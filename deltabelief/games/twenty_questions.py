"""Twenty Questions: the questioner uncovers a secret thing with yes/no questions.

Rules, in order (the game's judge semantics; docs/judges.md):

1. a move that is not exactly one question ending in '?', or is shorter than
   ``min_question_chars`` or longer than ``max_question_chars``, is ``invalid``;
2. a move equal to an earlier one (case, spacing and punctuation ignored) is ``repeated``;
3. a move that names the secret as a whole word is ``finished`` (solved);
4. otherwise the judge labels it; a judge ``finished`` without the secret named
   becomes ``yes`` (except an exact judge that recognised a guess of the secret under
   another name, e.g. the KB judge on a synonym); an unparseable judge answer is ``invalid``.

Invalid moves were never answered, so asking the corrected question next is not a repeat.

Invalid, repeated and unanswerable moves get fixed instructive messages and use a turn.
"""

from __future__ import annotations

import re
from typing import Hashable, Sequence

from deltabelief.games.base import GameState, StepResult, history_states, names_phrase, register_game
from deltabelief.types import JudgeReply, JudgeRequest, Message, Target

NAME = "twenty_questions"
JUDGE_LABELS = ("yes", "no", "invalid", "finished", "unanswerable")

INVALID_MESSAGE = (
    "That move doesn't count. Ask exactly one yes/no question that ends with a question mark "
    "(or guess with 'Is it <thing>?')."
)
REPEATED_MESSAGE = "You have asked that already. Ask a different yes/no question."
UNANSWERABLE_MESSAGE = (
    "I can't answer that with a plain yes or no. Ask about a single property, "
    "or guess one specific thing."
)
SOLVED_MESSAGE = "Yes! You found it: the answer is '{target}'."

SYSTEM_PROMPT = (
    "You are the questioner in a game of Twenty Questions. The other player has picked a secret: "
    "a common, concrete thing. On each turn, ask exactly one yes/no question that ends with '?'. "
    "Use the answers to narrow the possibilities, and when you are confident, guess by asking "
    "'Is it a <thing>?'. You have {max_turns} questions. Reply with the question only."
)
CANDIDATES_PROMPT = " The secret is one of these {count} things: {names}."
FIRST_PROMPT = "I am thinking of a secret thing. Ask your first yes/no question."

JUDGE_PROMPT = (
    "You are the answerer in a game of Twenty Questions. The secret is: '{target}'.\n"
    "The questioner asks one question per turn. Decide which label fits the latest question:\n"
    "- Yes: the true answer about '{target}' is yes.\n"
    "- No: the true answer about '{target}' is no.\n"
    "- Finished: the question guesses '{target}' itself.\n"
    "- Invalid: it is not a single yes/no question.\n"
    "Think briefly if you need to, then give exactly one label inside <answer></answer>, "
    "for example <answer>No</answer>."
)

_WORD = re.compile(r"[a-z0-9]+")


def normalize_move(move: str) -> str:
    """Lower case, words only: 'Is it  ALIVE ?' and 'is it alive?' are the same question."""
    return " ".join(_WORD.findall(move.lower()))


def names_target(move: str, target: str) -> bool:
    """True when ``target`` appears in ``move`` as a whole word (or whole phrase)."""
    return names_phrase(move, target, normalize_move)


def is_single_question(move: str) -> bool:
    text = move.strip()
    return text.endswith("?") and text.count("?") == 1


class TwentyQuestions:
    name = NAME

    def __init__(self, max_turns: int = 20, min_question_chars: int = 8, max_question_chars: int = 200,
                 candidates: Sequence[str] = ()):
        if max_turns < 1:
            raise ValueError(f"max_turns must be at least 1, got {max_turns}")
        self.max_turns = max_turns
        self.min_question_chars = min_question_chars
        self.max_question_chars = max_question_chars
        self.candidates = tuple(candidates)
        """Things the system prompt lists as the possible secrets (empty: no list)."""

    def system_prompt(self) -> str:
        prompt = SYSTEM_PROMPT.format(max_turns=self.max_turns)
        if self.candidates:
            prompt += CANDIDATES_PROMPT.format(count=len(self.candidates), names=", ".join(self.candidates))
        return prompt

    def opening_messages(self, target: Target) -> list[Message]:
        if target.messages:
            return [dict(m) for m in target.messages]
        return [
            {"role": "system", "content": self.system_prompt()},
            {"role": "user", "content": FIRST_PROMPT},
        ]

    def new_state(self, target: Target) -> GameState:
        return GameState(target=target, max_turns=self.max_turns)

    def precheck(self, state: GameState, move: str) -> StepResult | None:
        text = move.strip()
        if not is_single_question(text) or not (
            self.min_question_chars <= len(text) <= self.max_question_chars
        ):
            return StepResult(INVALID_MESSAGE, "invalid", False)
        asked = {normalize_move(t.move) for t in state.turns if t.status != "invalid"}
        if normalize_move(text) in asked:
            return StepResult(REPEATED_MESSAGE, "repeated", False)
        if names_target(text, state.target.answer):
            return StepResult(SOLVED_MESSAGE.format(target=state.target.answer), "finished", True)
        return None

    def judge_request(self, state: GameState, move: str) -> JudgeRequest:
        return JudgeRequest(
            task=self.name,
            target=state.target,
            move=move.strip(),
            history=state.history(),
            instructions=JUDGE_PROMPT.format(target=state.target.answer),
            labels=JUDGE_LABELS,
        )

    def resolve(self, state: GameState, move: str, reply: JudgeReply) -> StepResult:
        label = reply.label if reply.parsed else "invalid"
        if label == "finished":
            if reply.details.get("kind") == "guess":  # an exact judge matched a synonym of the secret
                return StepResult(SOLVED_MESSAGE.format(target=state.target.answer), "finished", True)
            # The secret was not named (precheck would have caught it): the judge meant yes.
            label = "yes"
        if label == "yes":
            return StepResult("Yes.", "yes", False)
        if label == "no":
            return StepResult("No.", "no", False)
        if label == "unanswerable":
            return StepResult(reply.text or UNANSWERABLE_MESSAGE, "unanswerable", False)
        return StepResult(INVALID_MESSAGE, "invalid", False)

    def step_states(self, turns: Sequence[tuple[str, str]]) -> list[Hashable]:
        return history_states(turns, normalize_move)


@register_game(NAME)
def make_twenty_questions(max_turns: int = 20, min_question_chars: int = 8, max_question_chars: int = 200,
                          candidates: Sequence[str] = ()):
    return TwentyQuestions(max_turns, min_question_chars, max_question_chars, candidates)
