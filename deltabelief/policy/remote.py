"""A policy served over HTTP: evaluation plays through a vLLM (or ``deltabelief serve``) endpoint.

``policy.backend: openai`` with ``policy.base_url`` (``http://host:8000/v1``) makes evaluation
send every move to ``POST {base_url}/completions`` with the conversation's exact token ids
(the chat template is applied here, with the tokenizer of ``policy.model``), and read back the
sampled token ids and their log-probabilities (vLLM's ``return_tokens_as_token_ids``). The move
is then cut exactly as local sampling cuts it (at the end-of-turn token, right after the first
token holding a '?', at ``max_new_tokens``), so the rest of evaluation (rollouts, judges, metrics)
does not know where the policy runs. Rated suites' final answers go to ``/chat/completions``.

What needs the weights is not available here: belief curves are skipped (evaluation says so in
its notes), and a :class:`RemotePolicy` cannot be trained. Each game draws the seed of each
request from its own generator, so a run is reproducible against the same server; at
temperature 0 it plays the games the local policy plays (tests/test_remote_policy.py).

Requests run concurrently, at most ``policy.max_concurrency`` at a time; connection errors,
timeouts, 408/429/5xx are retried ``policy.max_retries`` times with backoff, then
:class:`PolicyServerError` names the URL and the last error. The API key is read from the
variable named by ``policy.api_key_env`` and is never logged.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from concurrent.futures import ThreadPoolExecutor

import requests
import torch

from deltabelief.config import PolicyConfig
from deltabelief.policy.policy import Policy, move_stop_tokens, sampling_params
from deltabelief.policy.sampling import (
    STOP_LENGTH, Generators, PrefixCache, Sample, SamplingParams, StopTokens, record_draw,
)
from deltabelief.retry import RetriesExhausted, Retryable, is_retryable_status, with_retries

log = logging.getLogger(__name__)

_PREVIEW_CHARS = 300
TOKEN_ID_PREFIX = "token_id:"
"""How vLLM writes a sampled token under ``return_tokens_as_token_ids`` (so does `deltabelief serve`)."""


class PolicyServerError(RuntimeError):
    """The policy server failed, or answered something a move cannot be read from."""


def _token_id(token: str) -> int:
    if not token.startswith(TOKEN_ID_PREFIX):
        raise PolicyServerError(f"expected tokens as '{TOKEN_ID_PREFIX}<id>' (return_tokens_as_token_ids), "
                                f"got {token!r:.40}")
    return int(token[len(TOKEN_ID_PREFIX):])


def cut_move(token_ids: list[int], logprobs: list[float], stops: StopTokens, params: SamplingParams) -> Sample:
    """The move local sampling would have kept from these drawn tokens (rules: :mod:`.sampling`)."""
    move = Sample([], [], "", STOP_LENGTH)
    for token, logprob in zip(token_ids, logprobs):
        if not 0 <= token < len(stops.question):
            raise PolicyServerError(f"the server sampled token id {token}, outside this tokenizer's "
                                    f"{len(stops.question)} ids: is policy.model the served model's tokenizer?")
        reason = record_draw(move, token, logprob, stops, params)
        if reason is not None:
            move.stop_reason = reason
            break
    return move


class RemotePolicy:
    """The :class:`~deltabelief.policy.policy.Policy` interface evaluation uses, answered by a server."""

    model = None
    """No local weights: what needs them (belief curves) is skipped."""

    def __init__(self, config: PolicyConfig, tokenizer, session: requests.Session | None = None):
        if not config.base_url:
            raise ValueError("policy.backend 'openai' needs policy.base_url (e.g. http://127.0.0.1:8000/v1)")
        self.config = dataclasses.replace(config, keep_kv_cache=False)  # the server keeps its own cache
        self.tokenizer = tokenizer
        self.base_url = config.base_url.rstrip("/")
        self.served_model = config.served_model or config.model
        self._api_key = os.environ.get(config.api_key_env, "") if config.api_key_env else ""
        self.session = session or requests.Session()
        self._stops = move_stop_tokens(tokenizer, len(tokenizer))

    def __repr__(self) -> str:
        return f"RemotePolicy(base_url={self.base_url!r}, model={self.served_model!r})"

    def sample(
        self, prompt_id_lists: list[list[int]], *, generator: Generators, eval_mode: bool = False,
        batch_size: int | None = None, prefixes: list[PrefixCache | None] | None = None, keep_cache: bool = False,
    ) -> list[Sample]:
        """One move per prompt; ``batch_size``, ``prefixes`` and ``keep_cache`` are the server's business."""
        params = sampling_params(self.config, eval_mode)
        generators = generator if isinstance(generator, list) else [generator] * len(prompt_id_lists)
        if len(generators) != len(prompt_id_lists):
            raise ValueError(f"{len(prompt_id_lists)} prompts but {len(generators)} generators")
        # Seeds are drawn in prompt order before any request is sent, so they do not depend on timing.
        seeds = [int(torch.randint(0, 2**62, (1,), generator=g)) for g in generators]
        workers = max(1, min(self.config.max_concurrency, len(prompt_id_lists)))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="remote-policy") as pool:
            samples = list(pool.map(lambda args: self._sample_one(*args, params), zip(prompt_id_lists, seeds)))
        for sample in samples:
            sample.text = self.tokenizer.decode(sample.token_ids, skip_special_tokens=False,
                                                clean_up_tokenization_spaces=False)
        return samples

    def decode_session(self, *, eval_mode: bool = False, batch_size: int | None = None) -> None:
        """No local fast sampler: rollouts call :meth:`sample` (the server keeps its own cache)."""
        return None

    def chat(self, conversations: list[list[dict[str, str]]], temperature: float, max_tokens: int,
             seed: int) -> list[str]:
        """The assistant's reply to each conversation (rated suites' final answers)."""
        def one(index_and_messages):
            index, messages = index_and_messages
            body = self._post("/chat/completions", {"model": self.served_model, "messages": messages,
                                                    "temperature": temperature, "max_tokens": max_tokens,
                                                    "seed": seed + index})
            try:
                return str(body["choices"][0]["message"]["content"] or "")
            except (KeyError, IndexError, TypeError) as err:
                raise PolicyServerError(f"{self.base_url}/chat/completions sent no choices[0].message.content "
                                        f"({type(err).__name__}: {err})") from err

        workers = max(1, min(self.config.max_concurrency, len(conversations)))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="remote-policy") as pool:
            return list(pool.map(one, enumerate(conversations)))

    def _sample_one(self, prompt_ids: list[int], seed: int, params: SamplingParams) -> Sample:
        payload = {
            "model": self.served_model, "prompt": prompt_ids, "max_tokens": params.max_new_tokens,
            "temperature": params.temperature, "top_p": params.top_p, "top_k": params.top_k or -1, "seed": seed,
            "logprobs": 0, "return_tokens_as_token_ids": True, "skip_special_tokens": False,
        }
        if params.cut_at_question:
            payload.update(stop=["?"], include_stop_str_in_output=True)
        body = self._post("/completions", payload)
        try:
            logprobs = body["choices"][0]["logprobs"]
            token_ids = [_token_id(t) for t in logprobs["tokens"]]
            values = [float(v) for v in logprobs["token_logprobs"]]
        except (KeyError, IndexError, TypeError, ValueError) as err:
            raise PolicyServerError(f"{self.base_url}/completions sent no choices[0].logprobs with tokens and "
                                    f"token_logprobs ({type(err).__name__}: {err})") from err
        return cut_move(token_ids, values, self._stops, params)

    def _post(self, path: str, payload: dict) -> dict:
        url = self.base_url + path
        try:
            return with_retries(lambda: self._post_once(url, payload), self.config.max_retries + 1, 0.5,
                                what="policy server attempt")
        except RetriesExhausted as err:
            raise PolicyServerError(f"policy server at {url} did not answer after {self.config.max_retries + 1} "
                                    f"attempts (timeout {self.config.timeout_s}s each); last error: {err}") from None

    def _post_once(self, url: str, payload: dict) -> dict:
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        try:
            response = self.session.post(url, json=payload, headers=headers, timeout=self.config.timeout_s)
        except (requests.ConnectionError, requests.Timeout) as err:
            raise Retryable(self._redact(f"{type(err).__name__}: {err}")) from None
        preview = self._redact(response.text[:_PREVIEW_CHARS])
        if is_retryable_status(response.status_code):
            raise Retryable(f"HTTP {response.status_code}: {preview}")
        if response.status_code != 200:
            raise PolicyServerError(f"policy server at {url} refused the request: HTTP {response.status_code}: {preview}")
        try:
            return response.json()
        except ValueError as err:
            raise PolicyServerError(f"policy server at {url} sent a body that is not JSON: {preview}") from err

    def _redact(self, text: str) -> str:
        return text.replace(self._api_key, "***") if self._api_key else text


def load_policy(config: PolicyConfig, seed: int = 0):
    """The policy ``config`` names: local weights (``backend: local``) or a served model (``openai``)."""
    if config.backend == "openai":
        from deltabelief.policy.loading import load_tokenizer

        return RemotePolicy(config, load_tokenizer(config.model))
    return Policy.from_config(config, seed=seed)
