"""``POST /v1/completions`` with a token-id prompt: the subset of vLLM's completions API a policy needs.

A remote policy (:mod:`deltabelief.policy.remote`) sends the exact token ids of a conversation and
asks for the sampled ids and their log-probabilities back, as it does of a vLLM server:

- ``prompt``: a non-empty list of token ids (text prompts are not accepted: the caller owns the
  chat template, so served and local play see the same tokens);
- ``max_tokens`` (default 50), ``temperature`` (0 = greedy), ``top_p``, ``top_k`` (0 or -1: off),
  ``seed``;
- ``stop``: absent, or ``["?"]``: stop right after the first token whose text holds a '?'
  (the move cut of :mod:`deltabelief.policy.sampling`); other stop strings are refused;
- ``logprobs`` (0 is enough) with ``return_tokens_as_token_ids``: ``choices[0].logprobs`` then
  holds ``tokens`` as ``"token_id:<id>"`` and ``token_logprobs``, as vLLM writes them.

Here the server samples with the same code as local play, so at temperature 0 a served policy
plays exactly the games the local one does (tests/test_remote_policy.py).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from deltabelief.policy.remote import TOKEN_ID_PREFIX
from deltabelief.policy.sampling import STOP_LENGTH, STOP_QUESTION, Sample, SamplingParams
from deltabelief.serving.request_fields import RequestError, number

DEFAULT_MAX_TOKENS = 50
MAX_TOKENS_LIMIT = 1024
"""A move is a short question: far more than any move needs, and a bound on generation time."""


@dataclass(frozen=True)
class CompletionParams:
    prompt_ids: list[int]
    sampling: SamplingParams
    seed: int | None
    logprobs: bool
    """Return each sampled token with its log-probability."""


def _prompt_ids(body: dict, vocab_size: int) -> list[int]:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], list):
        prompt = prompt[0]  # a batch of one prompt, as OpenAI clients may send it
    if not isinstance(prompt, list) or not prompt or not all(isinstance(t, int) and not isinstance(t, bool)
                                                             for t in prompt):
        raise RequestError("field 'prompt' must be a non-empty list of token ids (this server takes "
                           "no text prompts: apply the chat template and tokenize on the client)")
    bad = next((i for i, t in enumerate(prompt) if not 0 <= t < vocab_size), None)
    if bad is not None:
        raise RequestError(f"prompt[{bad}] = {prompt[bad]} is not a token id of this model "
                           f"(vocabulary: 0..{vocab_size - 1})")
    return list(prompt)


def _cut_at_question(body: dict) -> bool:
    stop = body.get("stop")
    if stop is None or stop == []:
        return False
    if isinstance(stop, str):
        stop = [stop]
    if stop != ["?"]:
        raise RequestError(f"field 'stop' may only be [\"?\"] here (cut a move after its question), "
                           f"got {stop!r:.60}")
    return True


def parse_completion_request(body: Any, model_name: str, vocab_size: int) -> CompletionParams:
    """Validate a completions body; raises :class:`RequestError` naming the bad field."""
    if not isinstance(body, dict):
        raise RequestError("request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str):
        raise RequestError("field 'model' is required: a string")
    if model != model_name:
        raise RequestError(f"model {model!r} is not served here; this server serves {model_name!r}",
                           HTTPStatus.NOT_FOUND)
    if body.get("stream"):
        raise RequestError("'stream': true is not supported by this server")
    if number(body, "n", int, 1) != 1:
        raise RequestError("only 'n': 1 is supported")
    temperature = number(body, "temperature", float, 1.0)
    top_p = number(body, "top_p", float, 1.0)
    top_k = number(body, "top_k", int, 0)
    max_tokens = number(body, "max_tokens", int, DEFAULT_MAX_TOKENS)
    seed = number(body, "seed", int, None)
    if not 0.0 <= temperature <= 2.0:
        raise RequestError(f"field 'temperature' must be between 0 and 2, got {temperature}")
    if not 0.0 < top_p <= 1.0:
        raise RequestError(f"field 'top_p' must be in (0, 1], got {top_p}")
    if top_k < -1:
        raise RequestError(f"field 'top_k' must be -1, 0 (both: off) or positive, got {top_k}")
    if not 1 <= max_tokens <= MAX_TOKENS_LIMIT:
        raise RequestError(f"field 'max_tokens' must be between 1 and {MAX_TOKENS_LIMIT}, got {max_tokens}")
    if seed is not None and not 0 <= seed < 2**63:
        raise RequestError(f"field 'seed' must be between 0 and 2**63 - 1, got {seed:.3g}")
    sampling = SamplingParams(temperature, top_p, max(top_k, 0), max_tokens, cut_at_question=_cut_at_question(body))
    logprobs = number(body, "logprobs", int, None) is not None
    if logprobs and not body.get("return_tokens_as_token_ids"):
        raise RequestError("'logprobs' needs 'return_tokens_as_token_ids': true here "
                           "(tokens come back as ids, never as text to re-tokenize)")
    return CompletionParams(_prompt_ids(body, vocab_size), sampling, seed, logprobs)


def completion_body(sample: Sample, params: CompletionParams, model_name: str) -> dict[str, Any]:
    """A vLLM-style ``text_completion`` object for one sampled move."""
    finish = "length" if sample.stop_reason == STOP_LENGTH else "stop"
    choice: dict[str, Any] = {"index": 0, "text": sample.text, "finish_reason": finish,
                              "stop_reason": "?" if sample.stop_reason == STOP_QUESTION else None}
    if params.logprobs:
        choice["logprobs"] = {"tokens": [f"{TOKEN_ID_PREFIX}{t}" for t in sample.token_ids],
                              "token_logprobs": list(sample.logprobs)}
    return {
        "id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
        "model": model_name, "choices": [choice],
        "usage": {"prompt_tokens": len(params.prompt_ids), "completion_tokens": len(sample.token_ids),
                  "total_tokens": len(params.prompt_ids) + len(sample.token_ids)},
    }
