"""Customer Service: the questioner is a support agent who must find a customer's fix.

The judge plays a non-technical customer. ``target.answer`` is the true cause and
its fix (as in the reference data); ``extra['scenario']`` is the customer's
complaint (``extra['briefing']`` for PAPRIKA configs); the game's own opening prompt
needs it, the judge uses it when present.

Rules on top of :mod:`deltabelief.games.role_play`: one question per move (a move
with two '?' is invalid); 'Goal reached' when the agent proposes the correct fix,
which only the judge can tell; any other suggestion is answered in character and
the conversation goes on.
"""

from __future__ import annotations

from deltabelief.games.base import register_game
from deltabelief.games.role_play import RolePlayGame, require_field, scenario_opening
from deltabelief.types import Message, Target

NAME = "customer_service"

SYSTEM_PROMPT = (
    "You are a customer support agent. A customer contacts you with this problem: {scenario}\n"
    "Find the cause and tell the customer how to fix it. Each turn, ask one short question or ask "
    "the customer to check or try one thing. The customer is not technical, so use plain words. "
    "You have {max_turns} turns. When you know the cause, tell the customer the fix. "
    "Reply with your message to the customer only."
)
FIRST_PROMPT = "Hello, I need some help with a problem. What should I do?"

JUDGE_PROMPT = (
    "You are a customer talking to a support agent. {scenario_line}"
    "The real cause and its fix, which you do not know and must never say, is:\n{fix}\n"
    "You are not technical.\n"
    "How to reply:\n"
    "- Answer the agent's questions in plain everyday words, in one or two sentences, as this "
    "customer would.\n"
    "- When the agent asks you to check or try something, pretend you did and describe what you "
    "notice. What you notice must agree with the real cause.\n"
    "- If the agent tells you the fix that matches the real cause (the same fix in any words), "
    "reply only 'Goal reached' and label it Goal reached.\n"
    "- If the agent suggests something else, say you tried it and the problem is still there, "
    "and label it Answered.\n"
    "Label every other reply Answered."
)


class CustomerService(RolePlayGame):
    name = NAME

    def validate_target(self, target: Target) -> None:
        super().validate_target(target)
        if not target.messages:
            require_field(target, "scenario", "briefing")

    def own_opening_messages(self, target: Target) -> list[Message]:
        return scenario_opening(target, SYSTEM_PROMPT, FIRST_PROMPT, self.max_turns)

    def judge_instructions(self, target: Target) -> str:
        scenario = target.extra.get("scenario") or target.extra.get("briefing")
        line = f"Your problem: {scenario.strip()}\n" if isinstance(scenario, str) and scenario.strip() else ""
        return JUDGE_PROMPT.format(scenario_line=line, fix=target.answer.strip())


@register_game(NAME)
def make_customer_service(max_turns: int = 20, max_move_chars: int = 400) -> CustomerService:
    return CustomerService(max_turns=max_turns, max_move_chars=max_move_chars)
