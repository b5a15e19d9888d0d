"""Token-exact conversation building from a tokenizer's chat template.

A rollout never re-renders the whole conversation: it keeps the exact ids the
policy sampled and appends template tokens around them. The pieces come from
the chat template itself, derived generically by rendering two conversations
that differ only in their last part and taking the string difference:

- :func:`prompt_ids`: the opening messages plus the assistant header
  (the generation prompt), i.e. h_0;
- :func:`observation_ids`: what follows a sampled move: the end-of-turn marker
  (and the newline the template writes after it), the answer as a user message
  and the next assistant header;
- :func:`assistant_header_ids` / :func:`end_of_turn_ids`: the pieces that open
  and close an assistant message (the belief scorer writes an elicitation
  message between them).

For SmolLM2's template, ``prompt | move_1 | obs_1 | ... | move_N | obs_N`` equals
the tokenised rendering of the whole conversation, up to re-tokenisation of
the sampled moves (tests check this).
"""

from __future__ import annotations

from deltabelief.types import Message

# A neutral conversation used only to locate template pieces; its text never reaches a model.
DEFAULT_CONTEXT: tuple[Message, ...] = ({"role": "user", "content": "Hello."},)
# Placeholder assistant content used to find where an assistant message's content ends.
_PROBE_MOVE = "Is it a probe?"


def pad_id(tokenizer) -> int:
    """The id that fills right-padding: the tokenizer's pad token, else 0 (padded positions are
    masked out, so any id serves)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


class ChatTemplateError(ValueError):
    """The chat template does not split into prefix-stable pieces."""


def render(tokenizer, messages: list[Message], add_generation_prompt: bool) -> str:
    """The chat template applied to ``messages``, as text."""
    return tokenizer.apply_chat_template(
        [dict(m) for m in messages], tokenize=False, add_generation_prompt=add_generation_prompt
    )


def encode(tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` with no special tokens added (the template writes its own)."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def prompt_ids(tokenizer, messages: list[Message]) -> list[int]:
    """The opening messages rendered with the chat template plus the assistant header: h_0."""
    if not messages:
        raise ValueError("prompt_ids needs at least one message")
    return encode(tokenizer, render(tokenizer, messages, add_generation_prompt=True))


def _suffix_after(full: str, prefix: str, what: str) -> str:
    if not full.startswith(prefix):
        raise ChatTemplateError(
            f"chat template is not prefix-stable for {what}: rendering a longer conversation "
            f"changed earlier text (expected prefix {prefix[-80:]!r}, got {full[: len(prefix)][-80:]!r})"
        )
    return full[len(prefix) :]


def _move_prefix(tokenizer, context: tuple[Message, ...]) -> str:
    """Rendered text up to the end of a probe assistant move's content."""
    return render(tokenizer, list(context), add_generation_prompt=True) + _PROBE_MOVE


def observation_text(tokenizer, answer_text: str, context: tuple[Message, ...] = DEFAULT_CONTEXT) -> str:
    """Template text that follows a move: end of turn, the answer as a user message, next header."""
    conversation = list(context) + [
        {"role": "assistant", "content": _PROBE_MOVE},
        {"role": "user", "content": answer_text},
    ]
    full = render(tokenizer, conversation, add_generation_prompt=True)
    return _suffix_after(full, _move_prefix(tokenizer, context), "an observation")


def observation_ids(tokenizer, answer_text: str, context: tuple[Message, ...] = DEFAULT_CONTEXT) -> list[int]:
    """Ids of :func:`observation_text`: appended right after a sampled move's ids.

    ``context`` only serves to locate the pieces; templates whose pieces depend on
    the earlier conversation would need the real one (SmolLM2's and Qwen's don't).
    """
    return encode(tokenizer, observation_text(tokenizer, answer_text, context))


def assistant_header_ids(tokenizer, context: tuple[Message, ...] = DEFAULT_CONTEXT) -> list[int]:
    """Ids that open an assistant message (the generation prompt), e.g. ``<|im_start|>assistant\\n``."""
    with_header = render(tokenizer, list(context), add_generation_prompt=True)
    without = render(tokenizer, list(context), add_generation_prompt=False)
    return encode(tokenizer, _suffix_after(with_header, without, "the assistant header"))


def end_of_turn_ids(tokenizer, context: tuple[Message, ...] = DEFAULT_CONTEXT) -> list[int]:
    """Ids that close an assistant message, e.g. ``<|im_end|>\\n`` (marker plus the template's newline)."""
    conversation = list(context) + [{"role": "assistant", "content": _PROBE_MOVE}]
    full = render(tokenizer, conversation, add_generation_prompt=False)
    return encode(tokenizer, _suffix_after(full, _move_prefix(tokenizer, context), "the end of turn"))

