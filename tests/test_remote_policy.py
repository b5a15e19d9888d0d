"""A policy served over HTTP (`policy.backend: openai`) plays the games the local policy plays.

The server is `deltabelief serve`'s on loopback with a tiny model; its `/v1/completions` takes token-id
prompts the way vLLM does, so the same client talks to vLLM on the cluster.
"""

from __future__ import annotations

import contextlib
import dataclasses
import socket
import sys

import pytest
import requests
import torch

from deltabelief.config import ConfigError, PolicyConfig, load_config
from deltabelief.games.twenty_questions import TwentyQuestions
from deltabelief.policy.loading import tiny_causal_lm
from deltabelief.policy.policy import Policy
from deltabelief.policy.remote import PolicyServerError, RemotePolicy, cut_move, load_policy
from deltabelief.policy.sampling import STOP_EOS, STOP_LENGTH, STOP_QUESTION, SamplingParams, StopTokens
from deltabelief.rollout import rollout
from deltabelief.serving.openai_server import ServeLimits, running_server
from test_rollout import TARGETS, BiasedLM, ParityJudge

GREEDY = dict(eval_temperature=0.0, max_new_tokens=6, batch_size=4)


@contextlib.contextmanager
def serving(question_bias: float):
    """(local policy, base URL of the same weights served on loopback). With a bias of 6 on '?' every
    greedy move ends at its question; with none, at max_new_tokens."""
    model, tokenizer = tiny_causal_lm(0)
    bias = torch.zeros(len(tokenizer))
    bias[tokenizer.convert_tokens_to_ids("?")] = question_bias
    biased = BiasedLM(model, bias).eval()
    local = Policy(biased, tokenizer, PolicyConfig(model="tiny", **GREEDY))
    with running_server(biased, tokenizer, model_name="tiny", limits=ServeLimits(context_tokens=2048)) as url:
        yield local, url


@pytest.fixture(scope="module")
def served():
    with serving(6.0) as pair:
        yield pair


def remote_policy(url: str, **overrides) -> RemotePolicy:
    config = PolicyConfig(model="tiny", backend="openai", base_url=url, **{**GREEDY, **overrides})
    return load_policy(config)


@pytest.mark.parametrize("question_bias", [6.0, 0.0], ids=["cut-at-question", "cut-at-length"])
def test_a_served_policy_plays_the_same_games_as_the_local_one_at_temperature_zero(question_bias):
    game = TwentyQuestions(max_turns=3)
    with serving(question_bias) as (local, url):
        mine = rollout(local, game, ParityJudge(), TARGETS, n_per_target=2, seed=0, eval_mode=True, progress=False)
        theirs = rollout(remote_policy(url), game, ParityJudge(), TARGETS, n_per_target=2, seed=0, eval_mode=True,
                         progress=False)
    assert [t.input_ids for t in theirs] == [t.input_ids for t in mine]
    for a, b in zip(mine, theirs):
        for x, y in zip(a.turns, b.turns):
            assert x.token_ids == y.token_ids
            assert y.logprobs == pytest.approx(x.logprobs, abs=1e-5)


def test_seeded_sampling_through_the_server_is_reproducible(served):
    _, url = served
    game, policy = TwentyQuestions(max_turns=2), remote_policy(url, eval_temperature=1.0)
    first = rollout(policy, game, ParityJudge(), TARGETS, n_per_target=2, seed=3, eval_mode=True, progress=False)
    again = rollout(policy, game, ParityJudge(), TARGETS, n_per_target=2, seed=3, eval_mode=True, progress=False)
    assert [t.input_ids for t in first] == [t.input_ids for t in again]


def test_the_move_is_cut_as_local_sampling_cuts_it():
    stops = StopTokens(eos_ids=frozenset({0}), question=torch.tensor([False, False, True, False]))
    params = SamplingParams(max_new_tokens=3)
    assert cut_move([1, 2, 3], [-1.0, -2.0, -3.0], stops, params).token_ids == [1, 2]  # right after the '?'
    assert cut_move([1, 2], [-1.0, -2.0], stops, params).stop_reason == STOP_QUESTION
    eos = cut_move([1, 0, 3], [-1.0, -2.0, -3.0], stops, params)
    assert (eos.token_ids, eos.logprobs, eos.stop_reason) == ([1], [-1.0], STOP_EOS)  # eos is not part of a move
    length = cut_move([1, 3, 1, 3], [-1.0] * 4, stops, params)
    assert (length.token_ids, length.stop_reason) == ([1, 3, 1], STOP_LENGTH)
    no_cut = cut_move([2, 1], [-1.0, -2.0], stops, dataclasses.replace(params, cut_at_question=False))
    assert no_cut.token_ids == [2, 1]
    with pytest.raises(PolicyServerError, match="token id 7, outside"):  # another model's tokenizer
        cut_move([1, 7], [-1.0, -2.0], stops, params)


@pytest.mark.parametrize(
    "change, status, fragment",
    [
        ({"prompt": "Is it an animal?"}, 400, "list of token ids"),
        ({"prompt": [1, 10**9]}, 400, "prompt[1]"),
        ({"stop": ["\n"]}, 400, "'stop'"),
        ({"max_tokens": 0}, 400, "'max_tokens'"),
        ({"logprobs": 0, "return_tokens_as_token_ids": False}, 400, "return_tokens_as_token_ids"),
        ({"model": "other"}, 404, "not served here"),
        ({"prompt": [1] * 2048}, 400, "context is 2048"),
    ],
)
def test_bad_completion_requests_get_a_clear_error(served, change, status, fragment):
    _, url = served
    body = {"model": "tiny", "prompt": [1, 2, 3], "max_tokens": 4, **change}
    response = requests.post(f"{url}/completions", json=body, timeout=30)
    assert response.status_code == status
    assert fragment in response.json()["error"]["message"]


def test_an_unreachable_server_fails_after_bounded_retries_naming_the_url():
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}/v1"
    policy = remote_policy(url, max_retries=1, timeout_s=2.0)
    with pytest.raises(PolicyServerError, match=f"{url}/completions did not answer after 2 attempts"):
        policy.sample([[1, 2, 3]], generator=torch.Generator().manual_seed(0), eval_mode=True)


def test_the_openai_backend_needs_a_base_url():
    with pytest.raises(ConfigError, match="policy.base_url"):
        load_config("tiny", ["policy.backend=openai"])


def test_evaluation_through_a_served_policy_skips_belief_curves_and_says_so(served, tmp_path):
    from deltabelief.evaluation import evaluate_model

    _, url = served
    config = load_config("tiny", [f"policy.base_url={url}", "policy.backend=openai", "eval.num_targets=2",
                                  "eval.k=1", "eval.budgets=[2]", "eval.suites=[twenty_questions]"])
    result = evaluate_model(config, tmp_path, progress=False)
    assert "skipped" in result.notes["twenty_questions"]["belief curves"]
    assert not (tmp_path / "belief_curves.png").exists()
    assert (tmp_path / "results.parquet").exists()


def test_the_gpu_evaluation_starts_a_server_plays_through_it_and_stops_it(tmp_path, monkeypatch):
    """eval.policy_server='deltabelief' stands in for 'vllm' on the CPU: the same launch, the same client
    (whose games equal local play: the parity test above)."""
    from deltabelief.serving import policy_server

    model_dir = Policy(*tiny_causal_lm(0), PolicyConfig(model="tiny")).save(tmp_path / "model")
    config = load_config("tiny", [f"policy.model={model_dir}", "eval.num_targets=2", "eval.k=1", "eval.budgets=[2]",
                                  "eval.suites=[twenty_questions]", "eval.policy_server=deltabelief"])
    launched = []
    real_launch = policy_server.launched_server

    @contextlib.contextmanager
    def recording_launch(argv, base_url, ready_timeout_s):
        with real_launch(argv, base_url, ready_timeout_s) as url:
            launched.append(url)
            yield url
        with pytest.raises(requests.ConnectionError):  # stopped once the evaluation is done
            requests.get(f"{url}/models", timeout=5)

    monkeypatch.setattr(policy_server, "launched_server", recording_launch)
    result = policy_server.evaluate_through_server(config, model_dir, tmp_path / "eval", progress=False)
    assert len(launched) == 1
    assert len(result.results) == 2  # 2 targets x 1 sample x 1 budget
    assert "served" in result.notes["twenty_questions"]["belief curves"]  # played through the server


def test_a_policy_server_that_dies_at_start_is_an_error_quoting_its_log():
    from deltabelief.serving.policy_server import PolicyServerStartError, launched_server

    argv = [sys.executable, "-c", "import sys; print('no GPU here'); sys.exit(3)"]
    with pytest.raises(PolicyServerStartError, match="exited with code 3(.|\n)*no GPU here"):
        with launched_server(argv, "http://127.0.0.1:9/v1", ready_timeout_s=30):
            pass
