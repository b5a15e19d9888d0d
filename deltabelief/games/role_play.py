"""Shared rules for the judge-driven games, where the judge plays a character.

Guess My City, Murder Mystery, Customer Service and User Personalization are
role-play games: the judge writes a free-text reply in character and ends it
with a label (``answered`` for a normal reply, ``goal reached`` when the
questioner reached the goal). The game keeps the rules that need no judge:

1. an empty move, or one longer than ``max_move_chars``, is ``invalid``;
2. a move with more than one question mark is ``invalid`` (one question per move);
   games that require a question also reject moves without one;
3. a move equal to an earlier one (case, accents, spacing and punctuation ignored)
   is ``repeated``;
4. :meth:`RolePlayGame.goal_by_rule` may end the game without the judge
   (Guess My City: the move names the city and its country);
5. otherwise the judge answers. A judge ``goal reached`` is accepted only when
   :meth:`RolePlayGame.accept_goal` agrees (e.g. the guess names the city), else it
   becomes a normal reply. An unparseable judge reply that says 'Goal reached' in
   words counts as the label; otherwise its text is used as a normal reply, and an
   empty one is ``unanswerable``. Games without the 'goal reached' label never finish.

Statuses: ``answered`` (normal reply), ``finished`` (goal reached: solved),
``invalid``, ``repeated``, ``unanswerable``. Each uses a turn.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Hashable, Sequence

from deltabelief.games.base import GameState, StepResult, history_states, names_phrase
from deltabelief.types import JudgeReply, JudgeRequest, Message, Target

ANSWERED = "answered"
GOAL_REACHED = "goal reached"

MULTI_QUESTION_MESSAGE = "Please ask only one question per turn. Ask again with a single question."
NOT_A_QUESTION_MESSAGE = "Please ask me a question (one sentence ending with '?')."
EMPTY_MESSAGE = "I didn't get a message. Please ask your question."
TOO_LONG_MESSAGE = "That's too long for me. Please keep it to one short question or action."
REPEATED_MESSAGE = "You already asked me that. Please ask something new."
UNANSWERABLE_MESSAGE = "Sorry, I can't answer that. Please try a different question."
GOAL_MESSAGE = "Goal reached"

_WORD = re.compile(r"[a-z0-9]+")


def fold(text: str) -> str:
    """Lower case, accents removed, words only: 'Ciudad  Juárez!' -> 'ciudad juarez'."""
    decomposed = unicodedata.normalize("NFKD", text.lower())
    plain = "".join(c for c in decomposed if not unicodedata.combining(c))
    return " ".join(_WORD.findall(plain))


def mentions(text: str, phrase: str) -> bool:
    """True when ``phrase`` occurs in ``text`` as whole words (case and accents ignored)."""
    return names_phrase(text, phrase, fold)


def count_questions(move: str) -> int:
    return move.count("?")


def require_field(target: Target, *keys: str) -> str:
    """The first of ``target.extra[key]`` that is a non-empty string, or a ValueError naming the target."""
    for key in keys:
        value = target.extra.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    shown = {key: target.extra.get(key) for key in keys}
    raise ValueError(
        f"target {target.id!r} (task {target.task!r}): needs a non-empty string in extra{list(keys)}, got {shown}"
    )


def scenario_opening(target: Target, system_prompt: str, first_prompt: str, max_turns: int) -> list[Message]:
    """Opening messages of a game whose target carries a scenario (``extra['scenario']`` or
    ``['briefing']``): the system prompt with the scenario and the turn budget, then the first prompt."""
    scenario = require_field(target, "scenario", "briefing")
    return [
        {"role": "system", "content": system_prompt.format(scenario=scenario, max_turns=max_turns)},
        {"role": "user", "content": first_prompt},
    ]


class RolePlayGame:
    """Base class for the role-play games; subclasses set the prompts and the goal rules.

    Subclasses define ``name``, ``judge_labels``, :meth:`judge_instructions`,
    :meth:`own_opening_messages` and, if needed, :meth:`goal_by_rule`,
    :meth:`accept_goal`, :meth:`clean_reply` and :meth:`validate_target`.
    """

    name = "role_play"
    judge_labels: tuple[str, ...] = (ANSWERED, GOAL_REACHED)
    require_question = False
    invalid_message = "That move is not allowed in this game. Please try a different one."
    """True: a move must contain exactly one '?' (a question); False: at most one."""

    def __init__(self, max_turns: int = 20, max_move_chars: int = 400):
        if max_turns < 1:
            raise ValueError(f"max_turns must be at least 1, got {max_turns}")
        if max_move_chars < 1:
            raise ValueError(f"max_move_chars must be at least 1, got {max_move_chars}")
        self.max_turns = max_turns
        self.max_move_chars = max_move_chars

    def step_states(self, turns: Sequence[tuple[str, str]]) -> list[Hashable]:
        return history_states(turns, fold)

    # ------------------------------------------------------------ hooks

    def validate_target(self, target: Target) -> None:
        """Raise ValueError naming the target when it lacks what the game needs."""
        if not target.answer.strip():
            raise ValueError(f"target {target.id!r} (task {target.task!r}) has an empty 'target'")

    def own_opening_messages(self, target: Target) -> list[Message]:
        raise NotImplementedError

    def judge_instructions(self, target: Target) -> str:
        raise NotImplementedError

    def goal_by_rule(self, state: GameState, move: str) -> bool:
        """True when the move reaches the goal without asking the judge."""
        return False

    def accept_goal(self, state: GameState, move: str) -> bool:
        """Whether a judge 'goal reached' stands for this move."""
        return True

    def rejected_goal_message(self, state: GameState, move: str) -> str:
        return "That's not it. Keep going."

    def clean_reply(self, state: GameState, text: str) -> str:
        """Post-process the judge's reply text (e.g. hide the secret)."""
        return text

    # ------------------------------------------------------------ Game protocol

    def opening_messages(self, target: Target) -> list[Message]:
        self.validate_target(target)
        if target.messages:
            return [dict(m) for m in target.messages]
        return self.own_opening_messages(target)

    def new_state(self, target: Target) -> GameState:
        self.validate_target(target)
        return GameState(target=target, max_turns=self.max_turns)

    def precheck(self, state: GameState, move: str) -> StepResult | None:
        text = move.strip()
        if not text:
            return StepResult(EMPTY_MESSAGE, "invalid", False)
        if len(text) > self.max_move_chars:
            return StepResult(TOO_LONG_MESSAGE, "invalid", False)
        questions = count_questions(text)
        if questions > 1:
            return StepResult(MULTI_QUESTION_MESSAGE, "invalid", False)
        if self.require_question and questions == 0:
            return StepResult(NOT_A_QUESTION_MESSAGE, "invalid", False)
        if fold(text) in {fold(t.move) for t in state.turns}:
            return StepResult(REPEATED_MESSAGE, "repeated", False)
        if self.goal_by_rule(state, text):
            return StepResult(GOAL_MESSAGE, "finished", True)
        return None

    def judge_request(self, state: GameState, move: str) -> JudgeRequest:
        return JudgeRequest(
            task=self.name,
            target=state.target,
            move=move.strip(),
            history=state.history(),
            instructions=self.judge_instructions(state.target),
            labels=self.judge_labels,
        )

    def resolve(self, state: GameState, move: str, reply: JudgeReply) -> StepResult:
        text = self.clean_reply(state, reply.text.strip())
        label = reply.label if reply.parsed else None
        has_goal = GOAL_REACHED in self.judge_labels
        if label is None and has_goal and GOAL_REACHED in fold(reply.text):
            label = GOAL_REACHED  # the judge said it in words but forgot the tags
        if label == GOAL_REACHED and not has_goal:
            label = ANSWERED  # a game without a goal (Personalization) never finishes
        if label == GOAL_REACHED:
            if self.accept_goal(state, move.strip()):
                return StepResult(GOAL_MESSAGE, "finished", True)
            return StepResult(self.rejected_goal_message(state, move.strip()), ANSWERED, False)
        if label == "invalid":
            return StepResult(text or self.invalid_message, "invalid", False)
        if text:
            return StepResult(text, ANSWERED, False)
        return StepResult(UNANSWERABLE_MESSAGE, "unanswerable", False)
