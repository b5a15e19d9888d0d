"""A small OpenAI-compatible chat-completions server for a local transformers model.

Standard library only (``http.server``). Endpoints:

- ``POST /v1/chat/completions``: ``model`` and ``messages`` are required;
  ``temperature`` (default 1.0, 0 = greedy), ``max_tokens`` (or
  ``max_completion_tokens``, default 256), ``seed`` and ``n`` (must be 1) are
  optional; ``stream`` is not supported;
- ``GET /v1/models``: the one served model;
- ``GET /health``: ``{"status": "ok"}``.

Bad JSON, a missing or mistyped field gives HTTP 400 with an OpenAI-style error
body naming the field; an unknown model name gives 404. Generation runs one
request at a time (a lock around the model), which is what a 2-CPU machine can
do anyway. The server binds 127.0.0.1 by default and has no authentication.

Use :func:`running_server` in tests and scripts, :func:`serve` from the CLI
(:func:`build_server` loads a model spec and binds without serving yet).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from deltabelief.judges.local import generate_chat

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 4 * 1024 * 1024
MAX_TOKENS_LIMIT = 8192
DEFAULT_MAX_TOKENS = 256
ROLES = ("system", "user", "assistant")


class RequestError(ValueError):
    """A client error, answered with ``status`` and this message."""

    def __init__(self, message: str, status: int = HTTPStatus.BAD_REQUEST):
        super().__init__(message)
        self.status = int(status)


@dataclass(frozen=True)
class ChatParams:
    messages: list[dict[str, str]]
    temperature: float
    max_tokens: int
    seed: int | None


def _number(body: dict, key: str, kind: type, default: Any) -> Any:
    value = body.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
        raise RequestError(f"field '{key}' must be {'an integer' if kind is int else 'a number'}, got {value!r}")
    return kind(value)


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
    if body["model"] != model_name:
        raise RequestError(
            f"model {body['model']!r} is not served here; this server serves {model_name!r}", HTTPStatus.NOT_FOUND
        )
    if body.get("stream"):
        raise RequestError("'stream': true is not supported by this server")
    if _number(body, "n", int, 1) != 1:
        raise RequestError("only 'n': 1 is supported")
    temperature = _number(body, "temperature", float, 1.0)
    if not 0.0 <= temperature <= 2.0:
        raise RequestError(f"field 'temperature' must be between 0 and 2, got {temperature}")
    max_tokens = _number(body, "max_tokens", int, None)
    if max_tokens is None:
        max_tokens = _number(body, "max_completion_tokens", int, DEFAULT_MAX_TOKENS)
    if not 1 <= max_tokens <= MAX_TOKENS_LIMIT:
        raise RequestError(f"field 'max_tokens' must be between 1 and {MAX_TOKENS_LIMIT}, got {max_tokens}")
    return ChatParams(_messages(body), temperature, max_tokens, _number(body, "seed", int, None))


class ChatBackend:
    """The model behind the server; generates one request at a time."""

    def __init__(self, model, tokenizer, model_name: str):
        self.model = model
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.created = int(time.time())
        self._lock = threading.Lock()

    def complete(self, params: ChatParams) -> dict[str, Any]:
        """An OpenAI ``chat.completion`` object for validated ``params``."""
        with self._lock:
            (completion,) = generate_chat(
                self.model,
                self.tokenizer,
                [params.messages],
                temperature=params.temperature,
                max_tokens=params.max_tokens,
                seed=params.seed,
            )
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

    def models(self) -> dict[str, Any]:
        entry = {"id": self.model_name, "object": "model", "created": self.created, "owned_by": "deltabelief"}
        return {"object": "list", "data": [entry]}


class _Handler(BaseHTTPRequestHandler):
    server_version = "deltabelief-serve"
    timeout = 60  # seconds a client may take to send its request

    @property
    def backend(self) -> ChatBackend:
        return self.server.backend  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib signature)
        log.debug("%s %s", self.address_string(), format % args)

    def _send(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str) -> None:
        kind = {400: "invalid_request_error", 404: "not_found_error", 413: "invalid_request_error"}
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
            self._send(200, {"status": "ok"})
        elif path == "/v1/models":
            self._send(200, self.backend.models())
        else:
            self._error(404, f"no route GET {path}; routes: GET /health, GET /v1/models, POST /v1/chat/completions")

    def do_POST(self) -> None:  # noqa: N802 (stdlib name)
        path = self.path.split("?", 1)[0].rstrip("/")
        if path != "/v1/chat/completions":
            self._error(404, f"no route POST {path}; routes: POST /v1/chat/completions")
            return
        try:
            params = parse_chat_request(self._read_json(), self.backend.model_name)
        except RequestError as err:
            self._error(err.status, str(err))
            return
        try:
            response = self.backend.complete(params)
        except Exception as err:  # reported to the client as a 500 and logged with its traceback
            log.exception("generation failed")
            self._error(500, f"generation failed: {type(err).__name__}: {err}")
            return
        self._send(200, response)


def make_server(model, tokenizer, host: str = "127.0.0.1", port: int = 0, model_name: str = "local") -> ThreadingHTTPServer:
    """A bound (not yet serving) server; ``port`` 0 picks a free port."""
    if host not in ("127.0.0.1", "localhost"):
        log.warning("serving on %s without authentication: anyone who can reach it can use the model", host)
    server = ThreadingHTTPServer((host, port), _Handler)
    server.backend = ChatBackend(model, tokenizer, model_name)  # type: ignore[attr-defined]
    return server


def _base_url(server: ThreadingHTTPServer) -> str:
    host, port = server.server_address[:2]
    return f"http://{host}:{port}/v1"


@contextlib.contextmanager
def running_server(
    model, tokenizer, port: int = 0, host: str = "127.0.0.1", model_name: str = "local"
) -> Iterator[str]:
    """Serve ``model`` in a background thread; yields the base URL (``http://host:port/v1``)."""
    server = make_server(model, tokenizer, host, port, model_name)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield _base_url(server)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5.0)


def build_server(
    model_spec: str = "smollm2",
    host: str = "127.0.0.1",
    port: int = 8000,
    model_name: str | None = None,
    dtype: str = "float32",
) -> ThreadingHTTPServer:
    """Load ``model_spec`` (see :func:`~deltabelief.policy.loading.load_causal_lm`) and bind a server for it.

    The served model name (what clients put in ``model``) is ``model_name``,
    by default the spec itself, so ``judge.model`` can stay the same.
    """
    from deltabelief.policy.loading import load_causal_lm

    model, tokenizer = load_causal_lm(model_spec, dtype)
    return make_server(model, tokenizer, host, port, model_name or model_spec)


def serve(
    model_spec: str = "smollm2",
    host: str = "127.0.0.1",
    port: int = 8000,
    model_name: str | None = None,
    dtype: str = "float32",
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Load ``model_spec`` and serve it at ``http://host:port/v1`` until interrupted (Ctrl-C).

    ``on_ready(base_url)`` is called once the port is bound (the CLI prints it).
    """
    server = build_server(model_spec, host, port, model_name, dtype)
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
