"""Guess My City: the questioner finds the other player's home city by asking about it.

The judge plays someone from the city (``target.answer``, written 'City, Country').
It answers open questions about the city without naming it, and replies
'Goal reached' when the questioner guesses the city. Rules on top of
:mod:`deltabelief.games.role_play`:

- one question per move (a move with two '?' is invalid);
- a move that names the city (or one of ``extra['aliases']``) and its country
  finishes the game without the judge;
- a judge 'goal reached' stands only when the move names the city (a guess must
  name it); otherwise the questioner is told the guess is wrong;
- a judge 'invalid' (the move asks for the city's or country's name outright) is invalid;
- the city's name is masked in the judge's replies, so a leak cannot end the game.
"""

from __future__ import annotations

import re

from deltabelief.games.base import GameState, register_game
from deltabelief.games.role_play import ANSWERED, GOAL_REACHED, RolePlayGame, mentions
from deltabelief.types import Message, Target

NAME = "guess_my_city"

SYSTEM_PROMPT = (
    "You are playing Guess My City. The other player lives in a city somewhere in the world, "
    "and you have {max_turns} turns to find out which one. Each turn, ask one question about the "
    "city: its region, climate, size, food, history, landmarks, languages, and so on. Do not ask "
    "for the name of the city or its country. Each guess also uses a turn; to guess, name the city "
    "and its country, for example 'Is your city Porto, Portugal?'. Reply with your question only."
)
FIRST_PROMPT = "I'm thinking of my home city. Ask your first question."

JUDGE_PROMPT = (
    "You are a player in Guess My City. Your home city is {city}, in {country}. The other player "
    "asks questions to work out which city it is.\n"
    "How to reply:\n"
    "- Answer each question truthfully and helpfully in one or two sentences, as someone who "
    "lives in {city} would.\n"
    "- Never write the name of the city or of the country, and avoid names that give it away "
    "directly (for example a landmark named after the city).\n"
    "- If the question asks you to just say the name of the city or country, politely refuse "
    "and label it Invalid.\n"
    "- If the player guesses {city} (any common name for it counts), reply only 'Goal reached' "
    "and label it Goal reached.\n"
    "- If the player guesses a different city, say that it is not your city and label it Answered.\n"
    "Label every other reply Answered."
)
WRONG_GUESS_MESSAGE = "No, that's not my city. Keep asking."
ASKED_FOR_NAME_MESSAGE = "I can't just tell you the name. Ask me about the city instead."


def split_city(target: str) -> tuple[str, str]:
    """'Surat, India' -> ('Surat', 'India'); the country is the text after the last comma."""
    parts = [p.strip() for p in target.split(",")]
    if len(parts) < 2 or not parts[0] or not parts[-1]:
        raise ValueError(f"a Guess My City target must look like 'City, Country', got {target!r}")
    return parts[0], parts[-1]


class GuessMyCity(RolePlayGame):
    name = NAME
    judge_labels = (ANSWERED, GOAL_REACHED, "invalid")
    invalid_message = ASKED_FOR_NAME_MESSAGE

    def validate_target(self, target: Target) -> None:
        try:
            split_city(target.answer)
        except ValueError as err:
            raise ValueError(f"target {target.id!r} (task {target.task!r}): {err}") from None
        aliases = target.extra.get("aliases", [])
        if not isinstance(aliases, (list, tuple)) or not all(isinstance(a, str) and a.strip() for a in aliases):
            raise ValueError(f"target {target.id!r}: extra['aliases'] must be a list of names, got {aliases!r}")

    def city_names(self, target: Target) -> list[str]:
        city, _ = split_city(target.answer)
        return [city, *target.extra.get("aliases", [])]

    def names_city(self, target: Target, move: str) -> bool:
        return any(mentions(move, name) for name in self.city_names(target))

    def own_opening_messages(self, target: Target) -> list[Message]:
        return [
            {"role": "system", "content": SYSTEM_PROMPT.format(max_turns=self.max_turns)},
            {"role": "user", "content": FIRST_PROMPT},
        ]

    def judge_instructions(self, target: Target) -> str:
        city, country = split_city(target.answer)
        return JUDGE_PROMPT.format(city=city, country=country)

    def goal_by_rule(self, state: GameState, move: str) -> bool:
        _, country = split_city(state.target.answer)
        return self.names_city(state.target, move) and mentions(move, country)

    def accept_goal(self, state: GameState, move: str) -> bool:
        return self.names_city(state.target, move)

    def rejected_goal_message(self, state: GameState, move: str) -> str:
        return WRONG_GUESS_MESSAGE

    def clean_reply(self, state: GameState, text: str) -> str:
        for name in self.city_names(state.target):
            text = re.sub(rf"\b{re.escape(name)}\b", "my city", text, flags=re.IGNORECASE)
        return text


@register_game(NAME)
def make_guess_my_city(max_turns: int = 20, max_move_chars: int = 400) -> GuessMyCity:
    return GuessMyCity(max_turns=max_turns, max_move_chars=max_move_chars)
