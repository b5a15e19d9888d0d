"""A small OpenAI-compatible chat-completions server for a local transformers model.

Standard library only (``http.server``). Endpoints:

- ``POST /v1/chat/completions``: ``model`` and ``messages`` are required;
  ``temperature`` (default 1.0, 0 = greedy), ``max_tokens`` (or
  ``max_completion_tokens``, default 256), ``seed`` and ``n`` (must be 1) are
  optional; ``stream`` is not supported;
- ``POST /v1/completions``: a token-id prompt, sampled exactly as local play samples a move
  (the subset of vLLM's completions API a remote policy uses: :mod:`.token_completions`);
- ``GET /v1/models``: the one served model;
- ``GET /health``: ``status`` ('ok': idle; 'busy': generating, a new request
  would wait; 'full': the queue is full, a new request would be refused;
  'unhealthy': a generation has run past twice its time limit), with the queue's
  numbers; HTTP 200 for 'ok' and 'busy', 503 otherwise. It needs no API key.

Bad JSON, a missing, mistyped or out-of-range field gives HTTP 400 with an
OpenAI-style error body naming the field; so does a prompt that does not fit the
model's context with ``max_tokens`` (the limit is named). An unknown model name
gives 404. Generation runs one request at a time (:class:`GenerationQueue`);
at most ``max_queue`` others wait, each at most ``queue_timeout_s``, else HTTP
503; a generation stops at ``generation_timeout_s`` (HTTP 503) and as soon as
its client disconnects. The server binds 127.0.0.1 by default; with an
``api_key`` every ``/v1`` route needs ``Authorization: Bearer <key>`` (else
401), and a bind to any address other than loopback is refused without one.

Use :func:`running_server` in tests and scripts, :func:`serve` from the CLI
(:func:`build_server` loads a model spec and binds without serving yet).
"""

from __future__ import annotations

import contextlib
import copy
import hmac
import ipaddress
import json
import logging
import os
import select
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import torch

from deltabelief.judges.local import generate_chat
from deltabelief.serving.generation_queue import ClientGone, GenerationQueue, QueueFull, QueueTimeout
from deltabelief.serving.request_fields import RequestError, number
from deltabelief.serving.token_completions import completion_body, parse_completion_request

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 4 * 1024 * 1024
MAX_TOKENS_LIMIT = 8192
DEFAULT_MAX_TOKENS = 256
ROLES = ("system", "user", "assistant")
SEED_RANGE = (-(2**63), 2**63 - 1)  # what torch.manual_seed and OpenAI clients take: a signed 64-bit integer
API_KEY_ENV = "DELTABELIEF_SERVE_API_KEY"
"""The environment variable `deltabelief serve` reads its API key from (``--api-key-env`` names another)."""
LISTEN_BACKLOG = 128
"""Connections the kernel holds before they are accepted; with the stdlib default of 5, clients past the sixth
are left unconnected (or reset) while the accept loop is held up."""


@dataclass(frozen=True)
class ServeLimits:
    """What one request may cost the server."""

    max_queue: int = 16
    """Requests waiting for the model at most; one more gets HTTP 503."""
    queue_timeout_s: float = 120.0
    """Longest wait for the model; then HTTP 503."""
    generation_timeout_s: float = 120.0
    """Longest generation; it is stopped and answered with HTTP 503."""
    context_tokens: int | None = None
    """Prompt plus max_tokens at most; None: the model's ``max_position_embeddings``."""


@dataclass(frozen=True)
class ChatParams:
    messages: list[dict[str, str]]
    temperature: float
    max_tokens: int
    seed: int | None


def _seed(body: dict) -> int | None:
    seed = number(body, "seed", int, None)
    if seed is not None and not SEED_RANGE[0] <= seed <= SEED_RANGE[1]:
        raise RequestError(f"field 'seed' must be a 64-bit integer, between {SEED_RANGE[0]} and {SEED_RANGE[1]}, "
                           f"got {seed:.3g}")
    return seed


def _messages(body: dict) -> list[dict[str, str]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("field 'messages' is required: a non-empty list of {role, content} objects")
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise RequestError(f"messages[{i}] must be an object with 'role' and 'content'")
        if m.get("role") not in ROLES:
            raise RequestError(f"messages[{i}].role must be one of {list(ROLES)}, got {m.get('role')!r}")
        if not isinstance(m.get("content"), str):
            raise RequestError(f"messages[{i}].content must be a string")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def parse_chat_request(body: Any, model_name: str) -> ChatParams:
    """Validate a chat-completions body; raises :class:`RequestError` naming the bad field."""
    if not isinstance(body, dict):
        raise RequestError("request body must be a JSON object")
    if "model" not in body:
        raise RequestError("field 'model' is required")
    if not isinstance(body["model"], str):
        raise RequestError(f"field 'model' must be a string, got {body['model']!r:.40}")
    if body["model"] != model_name:
        raise RequestError(
            f"model {body['model']!r} is not served here; this server serves {model_name!r}", HTTPStatus.NOT_FOUND
        )
    if body.get("stream"):
        raise RequestError("'stream': true is not supported by this server")
    if number(body, "n", int, 1) != 1:
        raise RequestError("only 'n': 1 is supported")
    temperature = number(body, "temperature", float, 1.0)
    if not 0.0 <= temperature <= 2.0:
        raise RequestError(f"field 'temperature' must be between 0 and 2, got {temperature}")
    max_tokens = number(body, "max_tokens", int, None)
    if max_tokens is None:
        max_tokens = number(body, "max_completion_tokens", int, DEFAULT_MAX_TOKENS)
    if not 1 <= max_tokens <= MAX_TOKENS_LIMIT:
        raise RequestError(f"field 'max_tokens' must be between 1 and {MAX_TOKENS_LIMIT}, got {max_tokens}")
    return ChatParams(_messages(body), temperature, max_tokens, _seed(body))


class ChatBackend:
    """The model behind the server: checks that a request fits, queues it, generates within the limits."""

    def __init__(self, model, tokenizer, model_name: str, limits: ServeLimits = ServeLimits()):
        self.model = model
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.limits = limits
        self.context_tokens = limits.context_tokens or int(model.config.max_position_embeddings)
        self.created = int(time.time())
        self.queue = GenerationQueue(limits.max_queue, limits.queue_timeout_s)
        self.generate = generate_chat  # tests put a stand-in here
        # A fast tokenizer may not be used by two threads at once ("Already borrowed"), and the
        # generating thread holds the model's: requests are measured with a copy, one at a time.
        self._counting_tokenizer = copy.deepcopy(tokenizer)
        self._counting_lock = threading.Lock()
        # No token decodes to more characters than the longest vocabulary entry, so a prompt of
        # more than context x that many characters is refused before it is tokenized at all.
        self._max_token_chars = max((len(t) for t in tokenizer.get_vocab()), default=1)
        self._stops = None  # the move-cut rules of /v1/completions, computed on first use

    def check_fits(self, params: ChatParams) -> int:
        """The prompt's token count; raises a 400 naming the context when prompt + max_tokens exceed it."""
        limit = self.context_tokens - params.max_tokens
        chars = sum(len(m["content"]) for m in params.messages)
        if chars > (limit + 1) * self._max_token_chars:
            prompt_tokens = chars // self._max_token_chars  # a lower bound; tokenizing it all would take seconds
        else:
            with self._counting_lock:
                ids = self._counting_tokenizer.apply_chat_template(
                    params.messages, tokenize=True, add_generation_prompt=True, return_dict=True)["input_ids"]
            prompt_tokens = len(ids)
        if prompt_tokens > limit:
            raise RequestError(
                f"this model's context is {self.context_tokens} tokens, but the messages take "
                f"{'at least ' if chars > (limit + 1) * self._max_token_chars else ''}{prompt_tokens} tokens and "
                f"'max_tokens' asks for {params.max_tokens}: shorten the messages or lower 'max_tokens'"
            )
        return prompt_tokens

    def _within_limits(self, generate: Callable[[Callable[[], bool]], Any], client_gone: Callable[[], bool]
                       ) -> tuple[Any, str | None]:
        """Run ``generate(stop)`` in the queue's slot; ``stop()`` turns true once the client is gone or
        the time limit passed. Returns (its result, why it was stopped: 'client', 'time' or None)."""
        try:
            with self.queue.slot(client_gone):
                deadline = time.monotonic() + self.limits.generation_timeout_s
                stopped: list[str] = []

                def stop() -> bool:
                    if client_gone():
                        stopped.append("client")
                    elif time.monotonic() > deadline:
                        stopped.append("time")
                    return bool(stopped)

                result = generate(stop)
        except (QueueFull, QueueTimeout) as err:
            raise RequestError(f"server busy: {err}; retry later", HTTPStatus.SERVICE_UNAVAILABLE) from err
        return result, (stopped[0] if stopped else None)

    def _time_limit_error(self, tokens: int | str) -> RequestError:
        return RequestError(
            f"generation stopped at the server's time limit of {self.limits.generation_timeout_s:g} s "
            f"after {tokens} tokens; lower 'max_tokens' or retry later",
            HTTPStatus.SERVICE_UNAVAILABLE,
        )

    def complete(self, params: ChatParams, client_gone: Callable[[], bool] = lambda: False) -> dict[str, Any]:
        """An OpenAI ``chat.completion`` object for validated ``params``.

        Raises :class:`RequestError` (400: does not fit; 503: queue full, waited too long, or
        generation over its time limit) and :class:`ClientGone`.
        """
        self.check_fits(params)
        (completion,), stopped = self._within_limits(
            lambda stop: self.generate(self.model, self.tokenizer, [params.messages], temperature=params.temperature,
                                       max_tokens=params.max_tokens, seed=params.seed, stop=stop),
            client_gone,
        )
        if stopped == "client":
            raise ClientGone(f"the client closed its connection; generation stopped after "
                             f"{completion.completion_tokens} tokens")
        if stopped == "time":
            raise self._time_limit_error(completion.completion_tokens)
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model_name,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": completion.text},
                    "finish_reason": completion.finish_reason,
                }
            ],
            "usage": {
                "prompt_tokens": completion.prompt_tokens,
                "completion_tokens": completion.completion_tokens,
                "total_tokens": completion.prompt_tokens + completion.completion_tokens,
            },
        }

    def complete_tokens(self, body: Any, client_gone: Callable[[], bool] = lambda: False) -> dict[str, Any]:
        """A ``text_completion`` for a token-id prompt (:mod:`.token_completions`), sampled as local play samples."""
        from deltabelief.policy.sampling import GenerationStopped, StopTokens, sample_batch

        vocab = int(self.model.get_output_embeddings().weight.shape[0])
        params = parse_completion_request(body, self.model_name, vocab)
        if len(params.prompt_ids) + params.sampling.max_new_tokens > self.context_tokens:
            raise RequestError(f"this model's context is {self.context_tokens} tokens, but the prompt takes "
                               f"{len(params.prompt_ids)} and 'max_tokens' asks for {params.sampling.max_new_tokens}")
        if self._stops is None:
            self._stops = StopTokens.for_tokenizer(self.tokenizer, vocab)
        seed = params.seed if params.seed is not None else int.from_bytes(os.urandom(7), "big")

        def generate(stop):
            try:
                (sample,) = sample_batch(self.model, self.tokenizer, [params.prompt_ids], params.sampling,
                                         generator=torch.Generator().manual_seed(seed), stops=self._stops,
                                         should_stop=stop)
                return sample
            except GenerationStopped as err:
                return err

        sample, stopped = self._within_limits(generate, client_gone)
        if stopped == "client":
            raise ClientGone(f"the client closed its connection; generation {sample}")
        if stopped == "time":
            raise self._time_limit_error(sample.tokens)
        return completion_body(sample, params, self.model_name)

    def health(self) -> tuple[int, dict[str, Any]]:
        """(HTTP status, body) of ``GET /health``: what a new request would meet now."""
        state = self.queue.state()
        if state.generation_seconds is not None and state.generation_seconds > 2 * self.limits.generation_timeout_s:
            status = "unhealthy"  # the time limit is not taking effect (a stuck model, an endless prefill)
        elif state.generating and state.waiting >= self.limits.max_queue:
            status = "full"
        else:
            status = "busy" if state.generating else "ok"
        body = {
            "status": status,
            "generating": state.generating,
            "queued": state.waiting,
            "max_queue": self.limits.max_queue,
            "generation_seconds": None if state.generation_seconds is None else round(state.generation_seconds, 3),
            "generation_timeout_s": self.limits.generation_timeout_s,
        }
        return (200 if status in ("ok", "busy") else 503), body

    def models(self) -> dict[str, Any]:
        entry = {"id": self.model_name, "object": "model", "created": self.created, "owned_by": "deltabelief"}
        return {"object": "list", "data": [entry]}


class _Handler(BaseHTTPRequestHandler):
    server_version = "deltabelief-serve"
    timeout = 60  # seconds a client may take to send its request

    @property
    def backend(self) -> ChatBackend:
        return self.server.backend  # type: ignore[attr-defined]

    def _client_gone(self) -> bool:
        """True once the client has closed its connection (readable, and a peek reads end of file)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:  # reset by the peer, or already closed
            return True

    def _authorized(self) -> bool:
        key = self.server.api_key  # type: ignore[attr-defined]
        if key is None:
            return True
        given = self.headers.get("Authorization", "")
        if hmac.compare_digest(given.encode(), f"Bearer {key}".encode()):
            return True
        self._error(401, "missing or wrong API key: send the header 'Authorization: Bearer <key>'")
        self.close_connection = True  # the body, if any, was not read
        return False

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib signature)
        log.debug("%s %s", self.address_string(), format % args)

    def _send(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if status == 401:
            self.send_header("WWW-Authenticate", "Bearer")
        if status == 503:
            self.send_header("Retry-After", "1")
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str) -> None:
        kind = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
                413: "invalid_request_error", 503: "server_busy_error"}
        self._send(status, {"error": {"message": message, "type": kind.get(status, "server_error"), "code": status}})

    def _read_json(self) -> Any:
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            raise RequestError("a JSON body with a Content-Length header is required")
        if int(length) > MAX_BODY_BYTES:
            raise RequestError(f"request body over {MAX_BODY_BYTES} bytes", HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
        raw = self.rfile.read(int(length))
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise RequestError(f"request body is not valid JSON: {err}") from err

    def do_GET(self) -> None:  # noqa: N802 (stdlib name)
        path = self.path.split("?", 1)[0].rstrip("/")
        if path == "/health":
            self._send(*self.backend.health())
        elif not self._authorized():
            return
        elif path == "/v1/models":
            self._send(200, self.backend.models())
        else:
            self._error(404, f"no route GET {path}; routes: GET /health, GET /v1/models, POST /v1/chat/completions, "
                                  "POST /v1/completions")

    def do_POST(self) -> None:  # noqa: N802 (stdlib name)
        path = self.path.split("?", 1)[0].rstrip("/")
        if path not in ("/v1/chat/completions", "/v1/completions"):
            self._error(404, f"no route POST {path}; routes: POST /v1/chat/completions, POST /v1/completions")
            return
        if not self._authorized():
            return
        try:
            body = self._read_json()
            if path == "/v1/completions":
                response = self.backend.complete_tokens(body, self._client_gone)
            else:
                response = self.backend.complete(parse_chat_request(body, self.backend.model_name), self._client_gone)
        except RequestError as err:
            self._error(err.status, str(err))
            return
        except ClientGone as err:
            log.info("%s: %s", self.address_string(), err)
            self.close_connection = True
            return
        except Exception as err:  # reported to the client as a 500 and logged with its traceback
            log.exception("generation failed")
            self._error(500, f"generation failed: {type(err).__name__}: {err}")
            return
        self._send(200, response)


class _Server(ThreadingHTTPServer):
    request_queue_size = LISTEN_BACKLOG
    daemon_threads = True


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def check_bind(host: str, api_key: str | None, api_key_env: str = API_KEY_ENV) -> None:
    """Refuse (ValueError) to bind an address other than loopback without an API key."""
    if not api_key and not is_loopback(host):
        raise ValueError(
            f"refusing to serve on {host} without an API key: anyone who can reach it could use the model; "
            f"set {api_key_env} (or name another variable with --api-key-env), or bind 127.0.0.1"
        )


def make_server(
    model,
    tokenizer,
    host: str = "127.0.0.1",
    port: int = 0,
    model_name: str = "local",
    limits: ServeLimits = ServeLimits(),
    api_key: str | None = None,
) -> ThreadingHTTPServer:
    """A bound (not yet serving) server; ``port`` 0 picks a free port.

    Refuses (ValueError) a ``host`` other than loopback without an ``api_key``.
    """
    check_bind(host, api_key)
    server = _Server((host, port), _Handler)
    server.backend = ChatBackend(model, tokenizer, model_name, limits)  # type: ignore[attr-defined]
    server.api_key = api_key or None  # type: ignore[attr-defined]
    return server


def _base_url(server: ThreadingHTTPServer) -> str:
    host, port = server.server_address[:2]
    return f"http://{host}:{port}/v1"


@contextlib.contextmanager
def serving_in_background(server: ThreadingHTTPServer) -> Iterator[str]:
    """Serve a bound ``server`` in a background thread; yields its base URL; shuts it down after."""
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield _base_url(server)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5.0)


@contextlib.contextmanager
def running_server(
    model,
    tokenizer,
    port: int = 0,
    host: str = "127.0.0.1",
    model_name: str = "local",
    limits: ServeLimits = ServeLimits(),
    api_key: str | None = None,
) -> Iterator[str]:
    """Serve ``model`` in a background thread; yields the base URL (``http://host:port/v1``)."""
    with serving_in_background(make_server(model, tokenizer, host, port, model_name, limits, api_key)) as url:
        yield url


def build_server(
    model_spec: str = "smollm2",
    host: str = "127.0.0.1",
    port: int = 8000,
    model_name: str | None = None,
    dtype: str = "float32",
    limits: ServeLimits = ServeLimits(),
    api_key: str | None = None,
) -> ThreadingHTTPServer:
    """Load ``model_spec`` (see :func:`~deltabelief.policy.loading.load_causal_lm`) and bind a server for it.

    The served model name (what clients put in ``model``) is ``model_name``,
    by default the spec itself, so ``judge.model`` can stay the same.
    """
    from deltabelief.policy.loading import load_causal_lm

    check_bind(host, api_key)  # before loading a model for nothing
    model, tokenizer = load_causal_lm(model_spec, dtype)
    return make_server(model, tokenizer, host, port, model_name or model_spec, limits, api_key)


def serve(
    model_spec: str = "smollm2",
    host: str = "127.0.0.1",
    port: int = 8000,
    model_name: str | None = None,
    dtype: str = "float32",
    on_ready: Callable[[str], None] | None = None,
    limits: ServeLimits = ServeLimits(),
    api_key_env: str = API_KEY_ENV,
) -> None:
    """Load ``model_spec`` and serve it at ``http://host:port/v1`` until interrupted (Ctrl-C).

    The API key, if any, is read from the environment variable ``api_key_env`` (never
    logged). ``on_ready(base_url)`` is called once the port is bound (the CLI prints it).
    """
    api_key = os.environ.get(api_key_env) or None
    check_bind(host, api_key, api_key_env)
    server = build_server(model_spec, host, port, model_name, dtype, limits, api_key)
    log.info("API key %s", f"required (from ${api_key_env})" if api_key else f"not required (${api_key_env} is unset)")
    base_url = _base_url(server)
    log.info("serving %r at %s (Ctrl-C to stop)", server.backend.model_name, base_url)  # type: ignore[attr-defined]
    if on_ready is not None:
        on_ready(base_url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        log.info("stopping the server")
    finally:
        server.server_close()
