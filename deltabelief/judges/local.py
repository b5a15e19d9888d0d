"""The 'local' judge: a transformers chat model answering in-process.

All requests of a batch are rendered with the tokenizer's chat template, left
padded and generated together (``config.batch_size`` at a time). Temperature 0
means greedy decoding. Sampling is seeded from ``config.seed`` and a call
counter, so two judges built with the same seed give the same answers to the
same sequence of batches.

:func:`generate_chat` is also what the OpenAI-compatible server
(:mod:`deltabelief.serving.openai_server`) runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from deltabelief.config import JudgeConfig
from deltabelief.judges.base import register_judge
from deltabelief.judges.parsing import build_messages, parse_reply
from deltabelief.types import JudgeReply, JudgeRequest, Message

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Completion:
    """One generated chat reply."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    """'stop' when the model ended its turn, 'length' when max_tokens ran out."""


@contextlib.contextmanager
def _seeded(seed: int | None):
    """Fork the CPU RNG and seed it (``None``: use the global RNG as it is)."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


class _StopWhen(StoppingCriteria):
    """Ends generation for the whole batch once ``stop()`` is true (checked after every token)."""

    def __init__(self, stop: Callable[[], bool]):
        self.stop = stop

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), bool(self.stop()), dtype=torch.bool, device=input_ids.device)


@torch.no_grad()
def _generate_chunk(
    model, tokenizer, prompts: list[str], temperature: float, max_tokens: int, stop: Callable[[], bool] | None = None
) -> list[Completion]:
    """Generate for B prompts at once (left padded)."""
    enc = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    enc = enc.to(model.device)
    sampling = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0} if temperature > 0 else {"do_sample": False}
    out = model.generate(
        **enc,
        max_new_tokens=max_tokens,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        stopping_criteria=StoppingCriteriaList([_StopWhen(stop)]) if stop is not None else None,
        **sampling,
    )  # [B, L_prompt + L_new]
    prompt_len = enc["input_ids"].shape[1]
    new_tokens = out[:, prompt_len:]  # [B, L_new]
    completions = []
    for row, mask in zip(new_tokens.tolist(), enc["attention_mask"].tolist()):
        ended = tokenizer.eos_token_id in row
        kept = row[: row.index(tokenizer.eos_token_id)] if ended else row
        completions.append(
            Completion(
                text=tokenizer.decode(kept, skip_special_tokens=True, clean_up_tokenization_spaces=False),
                prompt_tokens=int(sum(mask)),
                completion_tokens=len(kept) + int(ended),
                finish_reason="stop" if ended else "length",
            )
        )
    return completions


def generate_chat(
    model,
    tokenizer,
    conversations: list[list[Message]],
    *,
    temperature: float,
    max_tokens: int,
    batch_size: int = 16,
    seed: int | None = None,
    stop: Callable[[], bool] | None = None,
) -> list[Completion]:
    """One assistant reply per conversation, in order.

    ``temperature`` 0 is greedy. ``seed`` (if given) makes sampling reproducible
    without disturbing the caller's global RNG. ``stop()``, checked after every
    token, ends generation early (finish reason 'length'): the server's time limit
    and client disconnects.
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    prompts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations]
    completions: list[Completion] = []
    with _seeded(seed):
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            completions.extend(_generate_chunk(model, tokenizer, chunk, temperature, max_tokens, stop))
    return completions


class LocalJudge:
    """An in-process transformers chat model as judge.

    ``stats``: ``calls`` (requests answered), ``unparseable`` (replies without a
    valid label, answered as 'invalid'), ``batches`` (``answer_batch`` calls).
    Each reply's ``details["finish_reason"]`` is 'stop' or 'length' (token budget ran out).
    """

    name = "local"

    def __init__(self, model, tokenizer, config: JudgeConfig):
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.stats: dict[str, int] = {"calls": 0, "unparseable": 0, "batches": 0}

    def answer_batch(self, requests: list[JudgeRequest]) -> list[JudgeReply]:
        if not requests:
            return []
        completions = generate_chat(
            self.model,
            self.tokenizer,
            [build_messages(r) for r in requests],
            temperature=self.config.temperature,
            max_tokens=self.config.max_tokens,
            batch_size=self.config.batch_size,
            seed=self.config.seed + self.stats["batches"],
        )
        self.stats["batches"] += 1
        replies = []
        for request, completion in zip(requests, completions):
            reply = parse_reply(completion.text, request.labels)
            reply = dataclasses.replace(reply, details={"finish_reason": completion.finish_reason})
            self.stats["calls"] += 1
            if not reply.parsed:
                self.stats["unparseable"] += 1
                log.debug("unparseable local judge reply for target %r: %r", request.target.id, completion.text[:200])
            replies.append(reply)
        return replies

    def __repr__(self) -> str:
        return f"LocalJudge(model={self.config.model!r}, temperature={self.config.temperature}, stats={self.stats})"


@register_judge("local")
def make_local_judge(config: JudgeConfig | None = None, model=None, tokenizer=None) -> LocalJudge:
    """A local judge; loads ``config.model`` with :func:`load_causal_lm` unless a model is given."""
    config = config or JudgeConfig(backend="local")
    if (model is None) != (tokenizer is None):
        raise ValueError("make_local_judge needs both model and tokenizer, or neither")
    if model is None:
        from deltabelief.policy.loading import load_causal_lm

        model, tokenizer = load_causal_lm(config.model)
    return LocalJudge(model, tokenizer, config)
