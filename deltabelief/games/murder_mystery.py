"""Murder Mystery: the questioner is a detective who must name the true culprit.

The judge plays the narrator and every character of the scenario, knowing the
hidden story. ``target.answer`` is that story (as in the reference data);
``extra['culprit']`` names the culprit when known, otherwise it is read from the
story ('The true culprit is X', 'The murderer is X', ...). ``extra['scenario']``
(or PAPRIKA's ``extra['briefing']``) is the detective's brief, used when the target
carries no opening messages.

Rules on top of :mod:`deltabelief.games.role_play`:

- one action or question per move (a move with two '?' is invalid);
- 'Goal reached' only for a direct accusation of the true culprit: a judge 'goal
  reached' stands only when the move uses accusation words (accuse, culprit,
  murderer, killer, guilty, arrest, ...) and, when the culprit is known, names
  them; a wrong accusation is answered and the investigation goes on.
"""

from __future__ import annotations

import re

from deltabelief.games.base import GameState, register_game
from deltabelief.games.role_play import RolePlayGame, fold, require_field, scenario_opening
from deltabelief.types import Message, Target

NAME = "murder_mystery"

SYSTEM_PROMPT = (
    "You are the detective in a murder mystery. Case brief: {scenario}\n"
    "Each turn, take exactly one action: question one character, examine one place or object, "
    "or check one alibi. The answers come from the game. Anyone can be the murderer, including "
    "witnesses and background characters, so test statements against each other before you decide. "
    "You have {max_turns} turns. When you are sure, accuse the murderer directly, for example "
    "'I accuse <name> of the murder.' Reply with your action only."
)
FIRST_PROMPT = "The investigation begins. What is your first action?"

JUDGE_PROMPT = (
    "You are the game master of a murder mystery. The hidden truth of the case is:\n{story}\n"
    "{culprit_line}"
    "The player is the detective. Each turn they question a character or examine something.\n"
    "How to reply:\n"
    "- Speak as the narrator or as the character being questioned, in two or three sentences.\n"
    "- Everything you describe must agree with the hidden truth. Characters may be evasive as "
    "their role suggests, but evidence and facts never lie.\n"
    "- Never state who the murderer is and never quote this hidden truth.\n"
    "- Only if the detective directly accuses the true culprit of the murder, reply only 'Goal "
    "reached' and label it Goal reached. Asking the culprit a question or merely mentioning them "
    "is not an accusation.\n"
    "- If the detective accuses someone else, say the accusation does not hold up and the "
    "investigation continues, and label it Answered.\n"
    "Label every other reply Answered."
)
WRONG_ACCUSATION_MESSAGE = "That accusation does not hold up. The investigation continues."
NOT_AN_ACCUSATION_MESSAGE = "Noted. The case is still open: what is your next action?"

TITLES = (
    "mr mrs ms miss dr prof professor sir lady lord captain capt sergeant sgt lieutenant lt commander "
    "colonel col officer detective chief father sister brother madame monsieur senator judge agent "
    "guru dato private general major"
).split()
_TITLE = r"(?:(?:" + "|".join(t.capitalize() for t in TITLES) + r")\.?\s+)"
_NAME = r"[A-Z][\w'’-]+"
_CULPRIT = re.compile(
    r"(?:culprit|murderer|killer)\s+(?:is|was)\s+(?:actually\s+)?(?:[a-z][\w'’]*,?\s+){0,4}?"
    rf"({_TITLE}*{_NAME}(?:\s+{_NAME})*)"
)
ACCUSATION_CUES = (
    "accuse", "accusing", "culprit", "murderer", "killer", "killed", "murdered", "guilty",
    "arrest", "responsible for", "did it", "committed",
)


def find_culprit(story: str) -> str | None:
    """The culprit's name from a story that states it ('The true culprit is Dr. Sonia Lenz, ...')."""
    match = _CULPRIT.search(story)
    return match.group(1).strip() if match else None


def name_tokens(name: str) -> list[str]:
    """Words of a name that identify the person: 'Dr. Sonia Lenz' -> ['sonia', 'lenz']."""
    return [w for w in fold(name).split() if w not in TITLES and len(w) > 1]


def is_accusation(move: str) -> bool:
    folded = f" {fold(move)} "
    return any(f" {fold(cue)}" in folded for cue in ACCUSATION_CUES)


class MurderMystery(RolePlayGame):
    name = NAME

    def story(self, target: Target) -> str:
        story = target.extra.get("story", target.answer)
        if not isinstance(story, str) or not story.strip():
            raise ValueError(f"target {target.id!r} (task {target.task!r}) has no story")
        return story.strip()

    def culprit(self, target: Target) -> str | None:
        named = target.extra.get("culprit")
        if named is not None:
            if not isinstance(named, str) or not name_tokens(named):
                raise ValueError(f"target {target.id!r}: extra['culprit'] must be a name, got {named!r}")
            return named
        return find_culprit(self.story(target))

    def validate_target(self, target: Target) -> None:
        super().validate_target(target)
        self.story(target)
        self.culprit(target)
        if not target.messages:
            require_field(target, "scenario", "briefing")

    def own_opening_messages(self, target: Target) -> list[Message]:
        return scenario_opening(target, SYSTEM_PROMPT, FIRST_PROMPT, self.max_turns)

    def judge_instructions(self, target: Target) -> str:
        culprit = self.culprit(target)
        line = f"The true culprit is {culprit}.\n" if culprit else ""
        return JUDGE_PROMPT.format(story=self.story(target), culprit_line=line)

    def accept_goal(self, state: GameState, move: str) -> bool:
        if not is_accusation(move):
            return False
        culprit = self.culprit(state.target)
        if culprit is None:
            return True  # the judge alone knows who it is
        words = set(fold(move).split())
        return any(token in words for token in name_tokens(culprit))

    def rejected_goal_message(self, state: GameState, move: str) -> str:
        return WRONG_ACCUSATION_MESSAGE if is_accusation(move) else NOT_AN_ACCUSATION_MESSAGE


@register_game(NAME)
def make_murder_mystery(max_turns: int = 20, max_move_chars: int = 400) -> MurderMystery:
    return MurderMystery(max_turns=max_turns, max_move_chars=max_move_chars)
