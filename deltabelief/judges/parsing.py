"""Prompts for LLM judges and the parser for their replies.

An LLM judge sees one chat: the game's instructions as the system message and a
user message that lays out the conversation so far and the latest move. It ends
its reply with one label inside ``<answer>…</answer>``.

Two kinds of games:

- label-only games (Twenty Questions): only the label matters;
- role-play games (the request's labels contain ``"answered"``): the judge plays a
  character, writes a free-text reply for the questioner and then a label
  (``answered``, ``goal reached``, …). The text outside the answer tags is the reply.

Parsing rules (:func:`parse_reply`): reasoning inside ``<think>…</think>`` is
removed first; the LAST ``<answer>…</answer>`` block is the answer; case,
surrounding whitespace, punctuation and markdown emphasis are ignored, and ``_``
or ``-`` count as spaces; an answer that matches none of the labels, or no answer
block at all, gives ``JudgeReply(label="invalid", parsed=False)``.
"""

from __future__ import annotations

import re

from deltabelief.types import JudgeReply, JudgeRequest

ROLE_PLAY_LABEL = "answered"
INVALID_LABEL = "invalid"

_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.IGNORECASE | re.DOTALL)
_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.IGNORECASE | re.DOTALL)
_THINK_CLOSE = re.compile(r"</think>", re.IGNORECASE)
_THINK_OPEN = re.compile(r"<think>", re.IGNORECASE)
_NOT_WORD = re.compile(r"[^a-z0-9 ]+")
_SPACES = re.compile(r"\s+")

LABEL_ONLY_TASK = (
    "Which label fits the latest move? Reply with exactly one of these labels inside "
    "<answer></answer>: {labels}. Example: <answer>{example}</answer>"
)
ROLE_PLAY_TASK = (
    "Write your reply to the latest message, staying in your role. Then, on the last line, "
    "give exactly one of these labels inside <answer></answer>: {labels}. "
    "Example: <answer>{example}</answer>"
)


def is_role_play(labels: tuple[str, ...]) -> bool:
    """Role-play games carry the label 'answered' (the judge's text is the reply)."""
    return ROLE_PLAY_LABEL in {normalize_label(label) for label in labels}


def normalize_label(text: str) -> str:
    """'**Goal_Reached.**' -> 'goal reached': lower case, words only, single spaces."""
    text = text.lower().replace("_", " ").replace("-", " ")
    return _SPACES.sub(" ", _NOT_WORD.sub("", text)).strip()


def _display_label(label: str) -> str:
    return label[:1].upper() + label[1:]


def render_history(history: tuple[tuple[str, str], ...]) -> str:
    """Earlier turns as a numbered transcript; '(no earlier turns)' when empty."""
    if not history:
        return "(no earlier turns)"
    lines = []
    for i, (move, answer) in enumerate(history, start=1):
        lines.append(f"Turn {i}\n  Questioner: {move.strip()}\n  You: {answer.strip()}")
    return "\n".join(lines)


def build_messages(request: JudgeRequest) -> list[dict[str, str]]:
    """The chat an LLM judge answers: ``[system, user]``.

    Raises ``ValueError`` when the request has no instructions or no labels: an
    LLM judge cannot answer without them.
    """
    if not request.instructions.strip():
        raise ValueError(f"judge request for task {request.task!r} has no instructions (system prompt)")
    if not request.labels:
        raise ValueError(f"judge request for task {request.task!r} has no labels to answer with")
    labels = [_display_label(label) for label in request.labels]
    template = ROLE_PLAY_TASK if is_role_play(request.labels) else LABEL_ONLY_TASK
    task = template.format(labels=", ".join(labels), example=labels[0])
    user = (
        f"Conversation so far:\n{render_history(request.history)}\n\n"
        f"Latest move from the questioner:\n{request.move.strip()}\n\n{task}"
    )
    return [
        {"role": "system", "content": request.instructions},
        {"role": "user", "content": user},
    ]


def strip_reasoning(raw: str) -> str:
    """Remove ``<think>…</think>`` blocks.

    Also handles the two broken forms reasoning models produce: a lone
    ``</think>`` (the chat template opened the block) drops everything before it,
    and a ``<think>`` that is never closed (the token budget ran out) drops
    everything after it.
    """
    text = _THINK_BLOCK.sub("", raw)
    closes = list(_THINK_CLOSE.finditer(text))
    if closes:
        text = text[closes[-1].end():]
    opened = _THINK_OPEN.search(text)
    if opened:
        text = text[: opened.start()]
    return text


def parse_reply(raw: str, labels: tuple[str, ...]) -> JudgeReply:
    """Turn a judge's raw completion into a :class:`JudgeReply`.

    The label is the last ``<answer>`` block matched against ``labels`` (returned
    lower case). For role-play label sets the text outside the answer tags is
    returned as ``text`` (also when the label is unparseable, so the game can
    decide); for label-only games ``text`` is empty.
    """
    if not labels:
        raise ValueError("parse_reply needs at least one label")
    visible = strip_reasoning(raw)
    text = _ANSWER.sub("", visible).strip() if is_role_play(labels) else ""
    answers = _ANSWER.findall(visible)
    by_norm = {normalize_label(label): label.lower() for label in labels}
    if answers:
        label = by_norm.get(normalize_label(answers[-1]))
        if label is not None:
            return JudgeReply(label=label, text=text, raw=raw, parsed=True)
    return JudgeReply(label=INVALID_LABEL, text=text, raw=raw, parsed=False)
