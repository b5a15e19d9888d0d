"""The ``deltabelief_game`` agent loop run by verl's own AgentLoopWorker on CPU.

The rollout server is a stand-in whose ``generate`` returns scripted token ids (as verl's vLLM
server manager returns ``TokenOutput``); the judge is the knowledge-base judge; the dataset rows
go through verl's RLHFDataset and collate function. Everything else is verl 0.9.1 code.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from verl.experimental.agent_loop.agent_loop import AgentLoopWorker, _agent_loop_registry
from verl.protocol import DataProto
from verl.trainer.ppo.utils import create_rl_dataset
from verl.utils.dataset.rl_dataset import collate_fn
from verl.workers.rollout.replica import TokenOutput

from deltabelief.config import load_config
from deltabelief.games.twenty_questions import INVALID_MESSAGE, REPEATED_MESSAGE
from deltabelief.integrations.verl.config_gen import AGENT_LOOP_TARGET, compose_verl_config, write_agent_loop_config
from deltabelief.integrations.verl.runner import write_verl_dataset
from deltabelief.policy.loading import load_tokenizer
from deltabelief.types import Target

# (move, ends with the end-of-turn token); the third one hit the token budget mid-question.
SCRIPT = [("Is it an animal?", True), ("Is it a dog?", True), ("Is it a fruit that is red and", False),
          ("Is it an animal?", True)]
LOGPROB = -0.5


class StubServer:
    """Stands in for verl's LLM server manager: scripted moves, one script position per game."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.position: dict[str, int] = {}
        self.params: list[dict] = []

    async def generate(self, request_id, *, prompt_ids, sampling_params, **kwargs) -> TokenOutput:
        turn = self.position.get(request_id, 0)
        self.position[request_id] = turn + 1
        self.params.append(dict(sampling_params))
        text, closed = SCRIPT[turn]
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        ids += [self.tokenizer.eos_token_id] if closed else []
        return TokenOutput(token_ids=ids, log_probs=[LOGPROB] * len(ids))


def play_games(tmp_path: Path, targets=("dog", "apple"), overrides=(), uids=None):
    """Play one game per target through verl's AgentLoopWorker; returns (verl config, tokenizer, input batch,
    rollout batch, stub server)."""
    tokenizer = load_tokenizer("tiny")
    config = load_config("tiny", [f"policy.model={tokenizer.name_or_path}", *overrides])
    rows = [Target(id=f"t-{name}", task="twenty_questions", answer=name) for name in targets]
    data = write_verl_dataset(rows, config, tmp_path / "train.parquet")
    verl_config = compose_verl_config(config, train_files=str(data), val_files=str(data),
                                      agent_loop_config_path=str(write_agent_loop_config(tmp_path / "loops.yaml")))
    dataset = create_rl_dataset(verl_config.data.train_files, verl_config.data, tokenizer, None, is_train=True)
    batch = DataProto.from_single_dict(collate_fn([dataset[i] for i in range(len(dataset))]))
    batch.non_tensor_batch["uid"] = np.array(uids or [f"uid-{name}" for name in targets], dtype=object)
    server = StubServer(tokenizer)

    async def run() -> DataProto:
        worker = AgentLoopWorker(verl_config, llm_client=server)  # verl's worker, without Ray
        return await worker.generate_sequences(batch)

    return verl_config, tokenizer, batch, asyncio.run(run()), server


@pytest.fixture(scope="module")
def games(tmp_path_factory):
    return play_games(tmp_path_factory.mktemp("verl-agent-loop"))


def valid_response(out: DataProto, row: int) -> tuple[list[int], list[int]]:
    width = out.batch["prompts"].shape[1]
    length = int(out.batch["attention_mask"][row, width:].sum())
    return out.batch["responses"][row, :length].tolist(), out.batch["response_mask"][row, :length].tolist()


def test_the_loop_is_registered_for_verl_workers(games):
    # registered at import in this process, and from the yaml verl's worker read in its own
    assert _agent_loop_registry["deltabelief_game"]["_target_"] == AGENT_LOOP_TARGET


def test_statuses_outcomes_and_turn_count(games):
    _, _, _, out, server = games
    assert [list(s) for s in out.non_tensor_batch["db_statuses"]] == [["yes", "finished"],
                                                                      ["no", "no", "invalid", "repeated"]]
    assert list(out.non_tensor_batch["db_solved"]) == [True, False]
    assert list(out.non_tensor_batch["db_truncated"]) == [False, False]
    assert list(out.non_tensor_batch["db_target"]) == ["dog", "apple"]
    assert list(out.non_tensor_batch["__num_turns__"]) == [5, 9]
    # every move was asked for with the per-question budget and the training temperature
    assert {p["max_tokens"] for p in server.params} == {12}
    assert {p["temperature"] for p in server.params} == {1.0}


def test_response_mask_is_one_exactly_on_the_sampled_tokens(games):
    _, tokenizer, _, out, _ = games
    for row in range(2):
        ids, mask = valid_response(out, row)
        ends = list(out.non_tensor_batch["db_turn_ends"][row])
        assert ends[0] == 0 and ends[-1] == len(ids)
        for turn, (start, end) in enumerate(zip(ends, ends[1:])):
            text, closed = SCRIPT[turn]
            sampled = tokenizer(text, add_special_tokens=False)["input_ids"] + ([tokenizer.eos_token_id] if closed else [])
            # h_{t-1} ends where move t starts: the move's ids exactly, mask 1 ...
            assert ids[start:start + len(sampled)] == sampled
            assert mask[start:start + len(sampled)] == [1] * len(sampled)
            # ... then the observation (end-of-turn if the move was cut, answer, header), mask 0
            assert mask[start + len(sampled):end] == [0] * (end - start - len(sampled))
            if not closed:
                assert ids[start + len(sampled)] == tokenizer.eos_token_id
        runs = sum(1 for i, m in enumerate(mask) if m and (i == 0 or not mask[i - 1]))
        assert runs == len(ends) - 1


def test_observations_carry_the_judges_answers_and_end_on_an_assistant_header(games):
    _, tokenizer, _, out, _ = games
    ids, _ = valid_response(out, 1)
    ends = list(out.non_tensor_batch["db_turn_ends"][1])
    observation = [tokenizer.decode(ids[a:b]) for a, b in zip(ends, ends[1:])]
    assert "No." in observation[0] and INVALID_MESSAGE in observation[2] and REPEATED_MESSAGE in observation[3]
    for text in observation:
        assert text.endswith("<|im_start|>assistant\n")  # h_t ends after the next header


def test_rollout_logprobs_and_the_success_score(games):
    _, _, _, out, _ = games
    width = out.batch["prompts"].shape[1]
    for row in range(2):
        length = int(out.batch["attention_mask"][row, width:].sum())
        mask = out.batch["response_mask"][row, :length].bool()
        logprobs = out.batch["rollout_log_probs"][row, :length]
        assert bool((logprobs[mask] == LOGPROB).all()) and bool((logprobs[~mask] == 0).all())
        scores = out.batch["rm_scores"][row]
        # the success score sits on the last response token (an observation token, mask 0)
        assert scores.nonzero().flatten().tolist() == ([length - 1] if row == 0 else [])
        assert not bool(mask[length - 1])
    assert out.batch["rm_scores"][0, :].sum().item() == 1.0


def test_a_game_stops_when_the_response_budget_is_full(tmp_path, monkeypatch):
    from deltabelief.integrations.verl import config_gen

    # a turn needs room for 12 + 1 + 64 = 77 tokens; after the first (17 tokens) 94 > 90 remain needed
    monkeypatch.setattr(config_gen, "response_length", lambda config: 90)
    _, _, _, out, _ = play_games(tmp_path, targets=("apple",))
    assert [list(s) for s in out.non_tensor_batch["db_statuses"]] == [["no"]]
    assert list(out.non_tensor_batch["db_truncated"]) == [True]
