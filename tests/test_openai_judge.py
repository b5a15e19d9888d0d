"""The openai judge against real loopback HTTP servers started here (127.0.0.1 only)."""

import contextlib
import json
import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from deltabelief.config import JudgeConfig
from deltabelief.judges.base import get_judge
from deltabelief.judges.openai_compat import (
    JudgeResponseError,
    JudgeUnavailableError,
    OpenAIJudge,
    make_openai_judge,
)
from deltabelief.types import JudgeRequest, Target

TQ = ("yes", "no", "invalid", "finished", "unanswerable")
KEY_ENV = "DELTABELIEF_TEST_JUDGE_KEY"
KEY = "sk-test-7f3a9c-do-not-print"


def _request(move: str = "Is it alive?") -> JudgeRequest:
    return JudgeRequest(
        task="twenty_questions",
        target=Target("t1", "twenty_questions", "cat"),
        move=move,
        instructions="You answer yes/no questions about the secret 'cat'.",
        labels=TQ,
    )


def _chat_body(content: str, finish_reason: str = "stop") -> dict:
    return {"choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish_reason}]}


class Recorder:
    """What a scripted server saw, and how many requests were in flight at once."""

    def __init__(self):
        self.lock = threading.Lock()
        self.bodies: list[dict] = []
        self.headers: list[dict] = []
        self.paths: list[str] = []
        self.in_flight = 0
        self.max_in_flight = 0


@contextlib.contextmanager
def scripted_server(respond):
    """Serve ``respond(index, body, headers, recorder) -> (status, body)`` on 127.0.0.1; yields (base_url, recorder)."""
    recorder = Recorder()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with recorder.lock:
                index = len(recorder.bodies)
                recorder.bodies.append(body)
                recorder.headers.append(dict(self.headers))
                recorder.paths.append(self.path)
            status, reply = respond(index, body, dict(self.headers), recorder)
            data = reply.encode() if isinstance(reply, str) else json.dumps(reply).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", recorder
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _config(base_url: str, **changes) -> JudgeConfig:
    fields = dict(
        backend="openai", model="judge-model", base_url=base_url, api_key_env=KEY_ENV,
        timeout_s=5.0, max_retries=2, backoff_s=0.01, temperature=0.7, max_tokens=64,
    )
    fields.update(changes)
    return JudgeConfig(**fields)


def test_answers_yes_with_key_from_env(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    with scripted_server(lambda i, body, headers, rec: (200, _chat_body("Cats breathe. <answer>Yes</answer>"))) as (url, rec):
        judge = make_openai_judge(_config(url + "/"))  # a trailing slash is fine
        (reply,) = judge.answer_batch([_request()])
    assert (reply.label, reply.parsed, reply.text) == ("yes", True, "")
    assert reply.raw == "Cats breathe. <answer>Yes</answer>"
    assert reply.details == {"finish_reason": "stop"}
    assert rec.paths == ["/v1/chat/completions"]
    assert rec.headers[0]["Authorization"] == f"Bearer {KEY}"
    body = rec.bodies[0]
    assert (body["model"], body["temperature"], body["max_tokens"]) == ("judge-model", 0.7, 64)
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    assert "Is it alive?" in body["messages"][1]["content"]
    assert judge.stats == {"calls": 1, "unparseable": 0, "attempts": 1, "retries": 0}
    assert KEY not in repr(judge)


def test_no_key_no_authorization_header(monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    with scripted_server(lambda i, body, headers, rec: (200, _chat_body("<answer>No</answer>"))) as (url, rec):
        (reply,) = make_openai_judge(_config(url)).answer_batch([_request()])
    assert reply.label == "no"
    assert "Authorization" not in rec.headers[0]


@pytest.mark.parametrize("status", [500, 503, 429, 408])
def test_transient_error_is_retried(status):
    def respond(i, body, headers, rec):
        return (status, {"error": "busy"}) if i == 0 else (200, _chat_body("<answer>No</answer>"))

    with scripted_server(respond) as (url, rec):
        judge = make_openai_judge(_config(url))
        (reply,) = judge.answer_batch([_request()])
    assert (reply.label, reply.parsed) == ("no", True)
    assert len(rec.bodies) == 2
    assert judge.stats == {"calls": 1, "unparseable": 0, "attempts": 2, "retries": 1}


def test_persistent_5xx_spends_retries_with_exponential_backoff(monkeypatch):
    from deltabelief import retry

    delays = []
    monkeypatch.setattr(retry.time, "sleep", delays.append)
    with scripted_server(lambda i, body, headers, rec: (503, {"error": "overloaded"})) as (url, rec):
        judge = make_openai_judge(_config(url, max_retries=3, backoff_s=0.5))
        with pytest.raises(JudgeUnavailableError, match=r"after 4 attempts.*HTTP 503.*overloaded"):
            judge.answer_batch([_request()])
    assert len(rec.bodies) == 4
    assert delays == [0.5, 1.0, 2.0]  # backoff_s * 2^(k-1) before retry k
    assert judge.stats == {"calls": 0, "unparseable": 0, "attempts": 4, "retries": 3}


@pytest.mark.timeout(30)
def test_silent_server_gives_unavailable_error(monkeypatch, caplog):
    """A server that accepts connections and never answers: timeouts, retries, then a clear error."""
    monkeypatch.setenv(KEY_ENV, KEY)
    caplog.set_level(logging.DEBUG)
    silent = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # the kernel completes connections; nobody ever reads or answers
    url = f"http://127.0.0.1:{silent.getsockname()[1]}/v1"
    try:
        judge = make_openai_judge(_config(url, timeout_s=0.2, max_retries=2))
        with pytest.raises(JudgeUnavailableError) as info:
            judge.answer_batch([_request()])
    finally:
        silent.close()
    message = str(info.value)
    assert f"{url}/chat/completions" in message
    assert "after 3 attempts" in message
    assert "Timeout" in message
    assert judge.stats["attempts"] == 3 and judge.stats["retries"] == 2 and judge.stats["calls"] == 0
    assert KEY not in message and KEY not in caplog.text and KEY not in repr(judge)
    assert "attempt 2/3" in caplog.text  # retries are logged (without the key)


def test_refused_connection_gives_unavailable_error():
    with socket.socket() as probe:  # a port with nothing listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    judge = make_openai_judge(_config(f"http://127.0.0.1:{port}/v1", max_retries=1))
    with pytest.raises(JudgeUnavailableError, match=r"after 2 attempts.*ConnectionError"):
        judge.answer_batch([_request()])
    assert judge.stats["attempts"] == 2


def test_client_error_is_not_retried_and_key_is_redacted(monkeypatch, caplog):
    monkeypatch.setenv(KEY_ENV, KEY)
    caplog.set_level(logging.DEBUG)

    def echo_auth(i, body, headers, rec):  # a careless server that echoes the credentials
        return 401, {"error": {"message": f"bad key: {headers['Authorization']}"}}

    with scripted_server(echo_auth) as (url, rec):
        judge = make_openai_judge(_config(url))
        with pytest.raises(JudgeResponseError, match="HTTP 401") as info:
            judge.answer_batch([_request()])
    assert len(rec.bodies) == 1 and judge.stats["attempts"] == 1
    assert KEY not in str(info.value) and "Bearer ***" in str(info.value)
    assert KEY not in caplog.text


@pytest.mark.parametrize("body", ["{}", "not json", json.dumps({"choices": []})])
def test_malformed_body_raises(body):
    with scripted_server(lambda i, b, headers, rec: (200, body)) as (url, rec):
        with pytest.raises(JudgeResponseError, match="choices"):
            make_openai_judge(_config(url)).answer_batch([_request()])


def test_null_content_is_unparseable():
    with scripted_server(lambda i, b, headers, rec: (200, _chat_body(None, "length"))) as (url, rec):
        judge = make_openai_judge(_config(url))
        (reply,) = judge.answer_batch([_request()])
    assert (reply.label, reply.parsed, reply.raw) == ("invalid", False, "")
    assert reply.details == {"finish_reason": "length"}
    assert judge.stats["unparseable"] == 1


def test_batch_is_concurrent_bounded_and_in_order():
    gate = threading.Barrier(2, timeout=5)

    def respond(i, body, headers, rec):
        with rec.lock:
            rec.in_flight += 1
            rec.max_in_flight = max(rec.max_in_flight, rec.in_flight)
        gate.wait()  # requests pass in pairs (the barrier resets): two are in flight at once
        with rec.lock:
            rec.in_flight -= 1
        move = body["messages"][1]["content"]
        return 200, _chat_body("<answer>Yes</answer>" if "even" in move else "<answer>No</answer>")

    moves = [f"Is it number {i} {'even' if i % 2 == 0 else 'odd'}?" for i in range(6)]
    with scripted_server(respond) as (url, rec):
        judge = make_openai_judge(_config(url, max_concurrency=2))
        replies = judge.answer_batch([_request(m) for m in moves])
    assert [r.label for r in replies] == ["yes", "no", "yes", "no", "yes", "no"]
    assert rec.max_in_flight == 2
    assert judge.stats == {"calls": 6, "unparseable": 0, "attempts": 6, "retries": 0}


def test_one_failing_request_fails_the_batch():
    def respond(i, body, headers, rec):
        bad = "broken" in body["messages"][1]["content"]
        return (404, {"error": "no such model"}) if bad else (200, _chat_body("<answer>Yes</answer>"))

    with scripted_server(respond) as (url, rec):
        judge = make_openai_judge(_config(url, max_concurrency=2))
        with pytest.raises(JudgeResponseError, match="HTTP 404"):
            judge.answer_batch([_request("Is it alive?"), _request("Is it broken?")])


def test_registry_and_empty_batch():
    judge = get_judge("openai", config=_config("http://127.0.0.1:9/v1"))
    assert isinstance(judge, OpenAIJudge) and judge.name == "openai"
    assert judge.answer_batch([]) == []
    assert judge.stats["attempts"] == 0
    with pytest.raises(ValueError, match="max_concurrency"):
        make_openai_judge(_config("http://127.0.0.1:9/v1", max_concurrency=0))
