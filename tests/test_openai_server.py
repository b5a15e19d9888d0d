"""The OpenAI-compatible server over loopback, and the openai judge against it end to end."""

import json
import threading

import pytest
import requests

from deltabelief.config import JudgeConfig
from deltabelief.games.base import Target, play_moves
from deltabelief.games.twenty_questions import INVALID_MESSAGE, TwentyQuestions
from deltabelief.judges.local import generate_chat
from deltabelief.judges.openai_compat import make_openai_judge
from deltabelief.policy.loading import tiny_causal_lm
from deltabelief.serving.openai_server import RequestError, build_server, parse_chat_request, running_server

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
    assert (health.status_code, health.json()) == (200, {"status": "ok"})
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
    ],
)
def test_bad_requests_get_clear_errors(server, body, status, fragment):
    response = _post(server, body)
    assert response.status_code == status
    error = response.json()["error"]
    assert fragment in error["message"] and error["code"] == status


def test_unknown_routes_are_404(server):
    assert requests.get(f"{server}/nothing", timeout=TIMEOUT).status_code == 404
    assert requests.post(f"{server}/completions", data="{}", timeout=TIMEOUT).status_code == 404


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
