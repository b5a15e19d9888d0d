"""The verl game loop against a judge served over loopback HTTP: failures, concurrency, budgets."""

from __future__ import annotations

import asyncio
import time

import pytest
import torch
from verl.protocol import DataProto
from verl.trainer.ppo.ray_trainer import compute_advantage

from deltabelief.config import JudgeConfig
from deltabelief.integrations.verl.runner import DeltaBeliefTrainer
from deltabelief.judges.async_client import AsyncOpenAIJudge
from deltabelief.policy.loading import tiny_causal_lm
from deltabelief.types import JudgeRequest, Target
from test_openai_judge import _chat_body, scripted_server
from test_verl_agent_loop import play_games, valid_response
from test_verl_reward_manager import CpuActorWorkerGroup


def _judge_overrides(url: str) -> list[str]:
    return ["judge.backend=openai", "judge.model=judge", f"judge.base_url={url}", "judge.max_retries=1",
            "judge.backoff_s=0.01", "judge.timeout_s=5"]


def _answers_no_except_for_apple(index, body, headers, recorder):
    if "apple" in json_text(body):
        return 503, {"error": "overloaded"}  # every attempt for this game fails
    return 200, _chat_body("<answer>no</answer>")


def json_text(body) -> str:
    return " ".join(m["content"] for m in body["messages"])


def _hook(verl_config, tokenizer, batch, rollout):
    batch = batch.union(rollout)  # as fit() does
    batch.meta_info["temperature"] = 1.0
    batch.meta_info["global_token_num"] = batch.batch["attention_mask"].sum(dim=1).tolist()
    trainer = DeltaBeliefTrainer.__new__(DeltaBeliefTrainer)  # no Ray workers: set what the hook reads
    trainer.config, trainer.tokenizer = verl_config, tokenizer
    trainer.actor_rollout_wg = CpuActorWorkerGroup(tiny_causal_lm(seed=3)[0])
    trainer._compute_old_log_prob(batch)
    return trainer, batch


def _advantages(batch: DataProto, rows: list[int]) -> torch.Tensor:
    data = DataProto.from_dict(tensors={"token_level_rewards": batch.batch["rm_scores"][rows],
                                        "response_mask": batch.batch["response_mask"][rows]},
                               non_tensors={"uid": batch.non_tensor_batch["uid"][rows]})
    return compute_advantage(data, adv_estimator="delta_belief_turn_grpo", config=None).batch["advantages"]


def test_a_game_whose_judge_fails_is_recorded_and_left_out_of_the_update(tmp_path):
    with scripted_server(_answers_no_except_for_apple) as (url, recorder):
        verl_config, tokenizer, batch, rollout, _ = play_games(
            tmp_path, targets=("dog", "apple", "cat", "car"), overrides=_judge_overrides(url), uids=["g", "g", "g", "h"])
    failed = list(rollout.non_tensor_batch["db_judge_failed"])
    assert failed[0] == failed[2] == failed[3] == "" and "JudgeUnavailableError" in failed[1] and "HTTP 503" in failed[1]
    assert sum("apple" in json_text(b) for b in recorder.bodies) == 2  # one try and one retry, then given up
    _, mask = valid_response(rollout, 1)
    assert mask and set(mask) == {0}  # the failed game trains nothing
    assert list(rollout.non_tensor_batch["db_statuses"][1]) == []

    trainer, hooked = _hook(verl_config, tokenizer, batch, rollout)
    metrics = trainer._delta_belief_metrics
    assert metrics["judge/failed_games"] == 1.0
    uids = list(hooked.non_tensor_batch["uid"])
    assert uids[0] == uids[2] == "g" and uids[1] != "g"  # out of its group
    advantages = _advantages(hooked, [0, 1, 2, 3])
    assert bool((advantages[1] == 0).all())
    # the other two games are normalised among themselves, as if the failed one had never been played
    torch.testing.assert_close(advantages[[0, 2]], _advantages(hooked, [0, 2]))


def test_a_step_where_every_judge_call_fails_raises(tmp_path):
    with scripted_server(lambda *a: (503, {"error": "down"})) as (url, _):
        verl_config, tokenizer, batch, rollout, _ = play_games(tmp_path, overrides=_judge_overrides(url))
    with pytest.raises(RuntimeError, match="judge failed for all 2 games"):
        _hook(verl_config, tokenizer, batch, rollout)


def test_async_judge_keeps_at_most_max_concurrency_calls_in_flight_with_paper_settings():
    def slow(index, body, headers, recorder):
        with recorder.lock:
            recorder.in_flight += 1
            recorder.max_in_flight = max(recorder.max_in_flight, recorder.in_flight)
        time.sleep(0.05)
        with recorder.lock:
            recorder.in_flight -= 1
        return 200, _chat_body("<answer>yes</answer>")

    request = JudgeRequest(task="twenty_questions", target=Target("t", "twenty_questions", "cat"), move="Alive?",
                           instructions="secret: cat", labels=("yes", "no"))
    with scripted_server(slow) as (url, recorder):
        judge = AsyncOpenAIJudge(JudgeConfig(backend="openai", base_url=url, max_concurrency=3,
                                             enable_thinking=False, max_tokens=16))

        async def ask_all():
            return await asyncio.gather(*[judge.answer(request) for _ in range(10)])

        replies = asyncio.run(ask_all())
    assert [r.label for r in replies] == ["yes"] * 10
    assert recorder.max_in_flight == judge.stats["max_in_flight"] == 3
    assert recorder.bodies[0]["chat_template_kwargs"] == {"enable_thinking": False}
    assert recorder.bodies[0]["max_tokens"] == 16


def test_a_long_observation_is_cut_to_the_reserve_instead_of_failing(tmp_path):
    reserve = 14  # the chat template's tokens around an answer fit; the invalid-move message does not
    _, tokenizer, _, rollout, _ = play_games(tmp_path, overrides=[f"cluster.observation_token_reserve={reserve}"])
    ids, mask = valid_response(rollout, 1)  # 'apple': its third move is invalid (a long message)
    ends = list(rollout.non_tensor_batch["db_turn_ends"][1])
    observations = []
    for start, end in zip(ends, ends[1:]):
        sampled = sum(mask[start:end])
        observations.append(end - start - sampled)
    assert max(observations) <= reserve + 1  # + the end-of-turn token added to a move cut at the budget
    assert len(observations) == 4 and list(rollout.non_tensor_batch["db_truncated"]) == [False, False]
