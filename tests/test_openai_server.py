"""The OpenAI-compatible server over loopback, and the openai judge against it end to end."""

import json
import select
import socket
import threading
import time

import pytest
import requests

from deltabelief.cli import main as cli_main
from deltabelief.config import JudgeConfig
from deltabelief.games.base import play_moves
from deltabelief.games.twenty_questions import INVALID_MESSAGE, TwentyQuestions
from deltabelief.judges.local import Completion, generate_chat
from deltabelief.judges.openai_compat import make_openai_judge
from deltabelief.policy.loading import tiny_causal_lm
from deltabelief.serving.openai_server import (
    RequestError, ServeLimits, build_server, make_server, parse_chat_request, running_server, serving_in_background,
)
from deltabelief.types import Target

TIMEOUT = 30  # seconds per HTTP call; the tiny model answers in well under a second
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Is a cat alive?"}]


@pytest.fixture(scope="module")
def tiny():
    return tiny_causal_lm(seed=0)


@pytest.fixture(scope="module")
def server(tiny):
    model, tokenizer = tiny
    with running_server(model, tokenizer, model_name="tiny") as base_url:
        yield base_url


def _post(url: str, body) -> requests.Response:
    data = body if isinstance(body, (str, bytes)) else json.dumps(body)
    return requests.post(f"{url}/chat/completions", data=data, timeout=TIMEOUT)


def test_health_and_models(server):
    assert server.startswith("http://127.0.0.1:")
    health = requests.get(server.removesuffix("/v1") + "/health", timeout=TIMEOUT)
    assert health.status_code == 200
    assert {k: health.json()[k] for k in ("status", "generating", "queued")} == {
        "status": "ok", "generating": False, "queued": 0}
    models = requests.get(f"{server}/models", timeout=TIMEOUT).json()
    assert [m["id"] for m in models["data"]] == ["tiny"]


def test_chat_completion_matches_direct_generation(server, tiny):
    model, tokenizer = tiny
    response = _post(server, {"model": "tiny", "messages": CHAT, "temperature": 0, "max_tokens": 5})
    assert response.status_code == 200
    body = response.json()
    (expected,) = generate_chat(model, tokenizer, [CHAT], temperature=0.0, max_tokens=5)
    choice = body["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": expected.text}
    assert choice["finish_reason"] == expected.finish_reason
    usage = body["usage"]
    assert usage["prompt_tokens"] == expected.prompt_tokens
    assert usage["completion_tokens"] == expected.completion_tokens <= 5
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert body["object"] == "chat.completion" and body["model"] == "tiny"


def test_seeded_sampling_is_reproducible(server):
    body = {"model": "tiny", "messages": CHAT, "temperature": 1.0, "max_tokens": 6, "seed": 7}
    first, second = (_post(server, body).json()["choices"][0]["message"]["content"] for _ in range(2))
    assert first == second


@pytest.mark.parametrize(
    "body, status, fragment",
    [
        ("{not json", 400, "not valid JSON"),
        ("[1, 2]", 400, "must be a JSON object"),
        ({"messages": CHAT}, 400, "'model' is required"),
        ({"model": "tiny"}, 400, "'messages' is required"),
        ({"model": "tiny", "messages": []}, 400, "'messages' is required"),
        ({"model": "tiny", "messages": [{"role": "robot", "content": "hi"}]}, 400, "messages[0].role"),
        ({"model": "tiny", "messages": [{"role": "user", "content": 3}]}, 400, "messages[0].content"),
        ({"model": "tiny", "messages": CHAT, "temperature": "hot"}, 400, "'temperature' must be a number"),
        ({"model": "tiny", "messages": CHAT, "max_tokens": 0}, 400, "'max_tokens' must be between"),
        ({"model": "tiny", "messages": CHAT, "max_tokens": 2.5}, 400, "'max_tokens' must be an integer"),
        ({"model": "tiny", "messages": CHAT, "stream": True}, 400, "stream"),
        ({"model": "tiny", "messages": CHAT, "n": 2}, 400, "'n': 1"),
        ({"model": "gpt-9", "messages": CHAT}, 404, "serves 'tiny'"),
        ({"model": 5, "messages": CHAT}, 400, "'model' must be a string"),
        ({"model": "tiny", "messages": CHAT, "seed": 10**23}, 400, "'seed' must be a 64-bit integer"),
        ({"model": "tiny", "messages": CHAT, "seed": 1e23}, 400, "'seed' must be an integer"),
        ('{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "temperature": NaN}', 400,
         "'temperature' must be between"),
    ],
)
def test_bad_requests_get_clear_errors(server, body, status, fragment):
    response = _post(server, body)
    assert response.status_code == status
    error = response.json()["error"]
    assert fragment in error["message"] and error["code"] == status


def test_unknown_routes_are_404(server):
    assert requests.get(f"{server}/nothing", timeout=TIMEOUT).status_code == 404
    assert requests.post(f"{server}/embeddings", data="{}", timeout=TIMEOUT).status_code == 404


def test_parse_chat_request_defaults():
    params = parse_chat_request({"model": "m", "messages": CHAT, "max_completion_tokens": 9}, "m")
    assert (params.temperature, params.max_tokens, params.seed) == (1.0, 9, None)
    with pytest.raises(RequestError, match="'seed' must be an integer"):
        parse_chat_request({"model": "m", "messages": CHAT, "seed": True}, "m")


def test_openai_judge_end_to_end(server):
    config = JudgeConfig(backend="openai", model="tiny", base_url=server, timeout_s=TIMEOUT, max_retries=0, max_tokens=8)
    judge = make_openai_judge(config)
    game = TwentyQuestions(max_turns=3)
    states = [game.new_state(Target(f"t{i}", "twenty_questions", word)) for i, word in enumerate(["cat", "spoon"])]
    # Neither move names the secret, so both go to the judge; the tiny model's text has no <answer>.
    results = play_moves(game, judge, states, ["Is it alive?", "Is it made of metal?"])
    assert [r.status for r in results] == ["invalid", "invalid"]
    assert all(r.text == INVALID_MESSAGE for r in results)
    assert judge.stats == {"calls": 2, "unparseable": 2, "attempts": 2, "retries": 0}
    assert [s.num_turns for s in states] == [1, 1]


def test_build_server_from_a_model_spec():
    """What `deltabelief serve` runs: load a spec, bind, serve; port 0 picks a free port."""
    server = build_server("tiny", port=0)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        models = requests.get(f"{url}/models", timeout=TIMEOUT).json()
        assert [m["id"] for m in models["data"]] == ["tiny"]  # the served name defaults to the spec
        response = _post(url, {"model": "tiny", "messages": CHAT, "temperature": 0, "max_tokens": 2})
        assert response.status_code == 200
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


# ---------------------------------------------------------------- limits: nothing hangs the server

HEALTH_POLLS = 200  # bounded waits: poll at most this many times, 0.05 s apart


def _health(url: str) -> requests.Response:
    return requests.get(url.removesuffix("/v1") + "/health", timeout=TIMEOUT)


def _wait_for_health(url: str, **expected) -> requests.Response:
    for _ in range(HEALTH_POLLS):
        response = _health(url)
        if all(response.json()[k] == v for k, v in expected.items()):
            return response
        time.sleep(0.05)
    raise AssertionError(f"/health never reported {expected}; last: {response.json()}")


class FakeGenerate:
    """Stands in for generate_chat: holds the model until released (``honour_stop``: or until stop() says so)."""

    def __init__(self, honour_stop: bool = True):
        self.release = threading.Event()
        self.stopped = threading.Event()
        self.honour_stop = honour_stop

    def __call__(self, model, tokenizer, conversations, *, temperature, max_tokens, seed=None, stop=None):
        for _ in range(2000):  # bounded: at most ~20 s
            if self.release.wait(0.01):
                break
            if self.honour_stop and stop():
                self.stopped.set()
                break
        return [Completion(text="done", prompt_tokens=3, completion_tokens=1, finish_reason="stop")]


@pytest.fixture
def slow_server(tiny, request):
    """A server whose generations wait for ``fake.release``; ``request.param``: its ServeLimits."""
    model, tokenizer = tiny
    server = make_server(model, tokenizer, model_name="tiny", limits=getattr(request, "param", ServeLimits()))
    fake = FakeGenerate()
    server.backend.generate = fake
    with serving_in_background(server) as url:
        yield url, fake
        fake.release.set()


def _post_in_background(url: str, body: dict) -> tuple[threading.Thread, list]:
    out: list = []
    thread = threading.Thread(target=lambda: out.append(_post(url, body)), daemon=True)
    thread.start()
    return thread, out


def test_a_prompt_over_the_models_context_is_refused_naming_the_limit(server):
    long_chat = [{"role": "user", "content": "word " * 5000}]  # ~5000 tokens; the tiny model's context is 4096
    response = _post(server, {"model": "tiny", "messages": long_chat, "max_tokens": 5})
    assert response.status_code == 400
    assert "this model's context is 4096 tokens" in response.json()["error"]["message"]
    # 1 MB is refused without being tokenized, just as clearly
    huge = [{"role": "user", "content": "x" * 1_000_000}]
    response = _post(server, {"model": "tiny", "messages": huge, "max_tokens": 5})
    assert response.status_code == 400 and "context is 4096 tokens" in response.json()["error"]["message"]


def test_prompt_plus_max_tokens_must_fit_the_context(tiny):
    model, tokenizer = tiny
    with running_server(model, tokenizer, model_name="tiny", limits=ServeLimits(context_tokens=64)) as url:
        assert _post(url, {"model": "tiny", "messages": CHAT, "max_tokens": 5}).status_code == 200
        response = _post(url, {"model": "tiny", "messages": CHAT, "max_tokens": 60})
        assert response.status_code == 400
        message = response.json()["error"]["message"]
        assert "context is 64 tokens" in message and "'max_tokens' asks for 60" in message


@pytest.mark.parametrize("slow_server", [ServeLimits(max_queue=1)], indirect=True)
def test_the_queue_is_bounded_and_health_says_so(slow_server):
    url, fake = slow_server
    body = {"model": "tiny", "messages": CHAT, "max_tokens": 2}
    first, first_out = _post_in_background(url, body)
    assert _wait_for_health(url, generating=True).json()["status"] == "busy"
    second, second_out = _post_in_background(url, body)
    full = _wait_for_health(url, queued=1)
    assert (full.status_code, full.json()["status"]) == (503, "full")
    refused = _post(url, body)  # a third request has no room
    assert refused.status_code == 503 and "1 requests already wait" in refused.json()["error"]["message"]
    fake.release.set()
    first.join(TIMEOUT), second.join(TIMEOUT)
    assert [first_out[0].status_code, second_out[0].status_code] == [200, 200]
    assert _wait_for_health(url, generating=False, queued=0).json()["status"] == "ok"


@pytest.mark.parametrize("slow_server", [ServeLimits(queue_timeout_s=0.2)], indirect=True)
def test_a_request_that_waits_too_long_for_the_model_gets_503(slow_server):
    url, fake = slow_server
    body = {"model": "tiny", "messages": CHAT, "max_tokens": 2}
    first, first_out = _post_in_background(url, body)
    _wait_for_health(url, generating=True)
    response = _post(url, body)
    assert response.status_code == 503 and "waited 0.2 s for the model" in response.json()["error"]["message"]
    fake.release.set()
    first.join(TIMEOUT)
    assert first_out[0].status_code == 200


@pytest.mark.parametrize("slow_server", [ServeLimits(generation_timeout_s=0.2)], indirect=True)
def test_a_generation_over_its_time_limit_is_stopped_with_503(slow_server):
    url, fake = slow_server
    response = _post(url, {"model": "tiny", "messages": CHAT, "max_tokens": 2})
    assert fake.stopped.is_set()
    assert response.status_code == 503 and "time limit of 0.2 s" in response.json()["error"]["message"]


def test_a_generation_that_overruns_its_limit_makes_health_unhealthy(tiny):
    model, tokenizer = tiny
    server = make_server(model, tokenizer, model_name="tiny", limits=ServeLimits(generation_timeout_s=0.05))
    server.backend.generate = fake = FakeGenerate(honour_stop=False)  # a model stuck in one forward pass
    with serving_in_background(server) as url:
        thread, _ = _post_in_background(url, {"model": "tiny", "messages": CHAT, "max_tokens": 2})
        stuck = _wait_for_health(url, status="unhealthy")
        assert stuck.status_code == 503 and stuck.json()["generating"] is True
        fake.release.set()
        thread.join(TIMEOUT)
        assert _wait_for_health(url, generating=False).json()["status"] == "ok"


def test_a_client_that_disconnects_cancels_its_generation(slow_server):
    url, fake = slow_server
    host, port = url.removeprefix("http://").removesuffix("/v1").split(":")
    payload = json.dumps({"model": "tiny", "messages": CHAT, "max_tokens": 2}).encode()
    with socket.create_connection((host, int(port)), timeout=TIMEOUT) as client:
        client.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                       + f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
        _wait_for_health(url, generating=True)
    assert fake.stopped.wait(TIMEOUT)  # stop() saw the closed connection; fake.release was never set
    assert _wait_for_health(url, generating=False).json()["status"] == "ok"


def test_generate_chat_stops_when_told(tiny):
    model, tokenizer = tiny
    (completion,) = generate_chat(model, tokenizer, [CHAT], temperature=0.0, max_tokens=50, stop=lambda: True)
    assert completion.completion_tokens == 1 and completion.finish_reason == "length"


def test_a_burst_of_50_clients_is_accepted_without_resets(tiny):
    """50 clients connect while the accept loop is not running (as when generation starves it): the
    listen backlog must hold them all. With the stdlib default of 5 only 6 connect."""
    model, tokenizer = tiny
    server = make_server(model, tokenizer, model_name="tiny", limits=ServeLimits(max_queue=64))
    address = server.server_address[:2]
    clients = []
    try:
        for _ in range(50):
            client = socket.socket()
            client.setblocking(False)
            client.connect_ex(address)
            clients.append(client)
        connected: set = set()
        for _ in range(50):  # bounded: at most ~5 s
            _, writable, _ = select.select([], [c for c in clients if c not in connected], [], 0.1)
            connected |= {c for c in writable if c.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0}
            if len(connected) == len(clients):
                break
        assert len(connected) == 50
        payload = json.dumps({"model": "tiny", "messages": CHAT, "max_tokens": 1}).encode()
        request = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                   + f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
        for client in clients:
            client.setblocking(True)
            client.settimeout(TIMEOUT)
            client.sendall(request)
        with serving_in_background(server):
            status_lines = [client.makefile("rb").readline() for client in clients]
        assert status_lines == [b"HTTP/1.0 200 OK\r\n"] * 50
    finally:
        for client in clients:
            client.close()


# ---------------------------------------------------------------- the API key


def test_with_an_api_key_every_v1_route_needs_it(tiny, monkeypatch):
    model, tokenizer = tiny
    with running_server(model, tokenizer, model_name="tiny", api_key="s3cret") as url:
        missing = requests.get(f"{url}/models", timeout=TIMEOUT)
        assert missing.status_code == 401 and "Authorization: Bearer" in missing.json()["error"]["message"]
        wrong = requests.get(f"{url}/models", headers={"Authorization": "Bearer nope"}, timeout=TIMEOUT)
        assert wrong.status_code == 401
        assert _post(url, {"model": "tiny", "messages": CHAT}).status_code == 401
        assert requests.get(f"{url}/models", headers={"Authorization": "Bearer s3cret"}, timeout=TIMEOUT).ok
        assert _health(url).status_code == 200  # health checks need no key
        monkeypatch.setenv("TEST_SERVE_KEY", "s3cret")  # the openai judge sends it from its api_key_env
        config = JudgeConfig(backend="openai", model="tiny", base_url=url, api_key_env="TEST_SERVE_KEY",
                             timeout_s=TIMEOUT, max_retries=0, max_tokens=4)
        judge = make_openai_judge(config)
        state = TwentyQuestions(max_turns=3).new_state(Target("t0", "twenty_questions", "cat"))
        (result,) = play_moves(TwentyQuestions(max_turns=3), judge, [state], ["Is it alive?"])
        assert judge.stats["calls"] == 1 and result.status == "invalid"  # answered (unparseable), not refused


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.7", "example.org"])
def test_binding_beyond_loopback_without_a_key_is_refused(tiny, host):
    model, tokenizer = tiny
    with pytest.raises(ValueError, match=f"refusing to serve on {host} without an API key.*DELTABELIEF_SERVE_API_KEY"):
        make_server(model, tokenizer, host=host, port=0)


def test_serve_cli_refuses_a_public_bind_without_a_key(monkeypatch, capsys):
    monkeypatch.delenv("DELTABELIEF_SERVE_API_KEY", raising=False)
    assert cli_main(["serve", "--model", "tiny", "--host", "0.0.0.0", "--port", "0"]) == 2
    assert "set DELTABELIEF_SERVE_API_KEY" in capsys.readouterr().err
