"""Batched multi-turn rollouts with a tiny model and stand-in judges: token layout, stopping, seeds."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from deltabelief.config import PolicyConfig
from deltabelief.games.base import GameState, StepResult
from deltabelief.games.twenty_questions import TwentyQuestions
from deltabelief.policy import chat
from deltabelief.policy.loading import tiny_causal_lm
from deltabelief.policy.policy import Policy
from deltabelief.rollout import rollout, rollout_with_stats
from deltabelief.types import JudgeReply, JudgeRequest, Target

TARGETS = [
    Target(id="t0", task="twenty_questions", answer="apple"),
    Target(id="t1", task="twenty_questions", answer="bus"),
]


class BiasedLM(torch.nn.Module):
    """Tiny random model with a fixed logit bias [V], so that '?' arrives within a few tokens."""

    def __init__(self, inner, bias: torch.Tensor):
        super().__init__()
        self.inner = inner
        self.register_buffer("bias", bias)

    def get_output_embeddings(self):
        return self.inner.get_output_embeddings()

    def forward(self, **kwargs):
        out = self.inner(**kwargs)
        out.logits = out.logits + self.bias
        return out


class ParityJudge:
    """Stand-in judge: 'yes' when the move has an even number of characters, else 'no'."""

    name = "parity"

    def __init__(self):
        self.batches: list[int] = []

    def answer_batch(self, requests: list[JudgeRequest]) -> list[JudgeReply]:
        self.batches.append(len(requests))
        return [JudgeReply(label="yes" if len(r.move) % 2 == 0 else "no") for r in requests]


class FinishTargetJudge:
    """Stand-in judge: 'finished' for every move about target ``winner``, 'no' for the others."""

    name = "finish-one"

    def __init__(self, winner: str):
        self.winner = winner

    def answer_batch(self, requests: list[JudgeRequest]) -> list[JudgeReply]:
        return [JudgeReply(label="finished" if r.target.answer == self.winner else "no") for r in requests]


class LabelGame:
    """Stand-in game with no rules of its own: the judge's label decides, 'finished' ends the game."""

    name = "label_game"

    def __init__(self, max_turns: int = 3):
        self.max_turns = max_turns

    def opening_messages(self, target: Target) -> list[dict[str, str]]:
        return [{"role": "user", "content": f"Find it in {self.max_turns} questions."}]

    def new_state(self, target: Target) -> GameState:
        return GameState(target=target, max_turns=self.max_turns)

    def precheck(self, state: GameState, move: str) -> StepResult | None:
        return None

    def judge_request(self, state: GameState, move: str) -> JudgeRequest:
        return JudgeRequest(task=self.name, target=state.target, move=move, history=state.history())

    def resolve(self, state: GameState, move: str, reply: JudgeReply) -> StepResult:
        if reply.label == "finished":
            return StepResult("Solved.", "finished", True)
        return StepResult("No.", "no", False)


@pytest.fixture(scope="module")
def policy() -> Policy:
    model, tokenizer = tiny_causal_lm(0)
    bias = torch.zeros(len(tokenizer))
    bias[tokenizer.convert_tokens_to_ids("?")] = 9.0
    return Policy(BiasedLM(model, bias).eval(), tokenizer, PolicyConfig(model="tiny", max_new_tokens=16, batch_size=3))


def test_token_layout_spans_and_observations(policy):
    game = TwentyQuestions(max_turns=4)
    trajectories = rollout(policy, game, ParityJudge(), TARGETS, n_per_target=3, seed=0, progress=False)
    assert [(t.group_id, t.sample_index) for t in trajectories] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    statuses = set()
    for traj in trajectories:
        opening = game.opening_messages(traj.target)
        assert traj.input_ids[: traj.prompt_length] == chat.prompt_ids(policy.tokenizer, opening)
        assert traj.num_turns == 4 and not traj.solved
        previous_end = traj.prompt_length
        for turn in traj.turns:
            start, end = turn.span
            assert start == previous_end  # move_t starts where h_{t-1} ends
            assert traj.input_ids[start:end] == turn.token_ids
            assert len(turn.logprobs) == len(turn.token_ids) <= 16
            assert turn.move == policy.tokenizer.decode(turn.token_ids)
            assert traj.input_ids[end : turn.end_of_turn] == chat.observation_ids(policy.tokenizer, turn.answer)
            previous_end = turn.end_of_turn
            statuses.add(turn.status)
        assert traj.turns[-1].end_of_turn == len(traj.input_ids)  # the last observation is appended too
        assert sum(traj.response_mask()) == sum(len(t.token_ids) for t in traj.turns)
        assert traj.statuses() == [t.status for t in traj.turns]
    assert statuses & {"yes", "no"}  # some moves reached the judge


def test_rendered_conversation_retokenises_to_input_ids(policy):
    trajectories = rollout(policy, TwentyQuestions(max_turns=3), ParityJudge(), TARGETS, 2, seed=1, progress=False)
    for traj in trajectories:
        assert len(traj.messages) == 2 + 2 * traj.num_turns
        # Replace each sampled move by the re-tokenised move text; the rest must match exactly.
        expected, cursor = [], 0
        for turn in traj.turns:
            start, end = turn.span
            expected += traj.input_ids[cursor:start] + chat.encode(policy.tokenizer, turn.move)
            cursor = end
        expected += traj.input_ids[cursor:]
        assert chat.prompt_ids(policy.tokenizer, traj.messages) == expected


def test_logprobs_match_a_fresh_forward_over_the_whole_conversation(policy):
    (traj,) = rollout(policy, TwentyQuestions(max_turns=3), ParityJudge(), TARGETS[:1], 1, seed=2, progress=False)
    with torch.no_grad():
        logits = policy.model(input_ids=torch.tensor([traj.input_ids])).logits[0]  # [L, V]
    logp = torch.log_softmax(logits.float(), dim=-1)
    for turn in traj.turns:
        start, end = turn.span
        fresh = logp[start - 1 : end - 1].gather(-1, torch.tensor(turn.token_ids)[:, None]).squeeze(-1)
        assert torch.allclose(fresh, torch.tensor(turn.logprobs), atol=1e-4)


def test_keeping_kv_caches_between_turns_changes_nothing(policy):
    uncached = Policy(policy.model, policy.tokenizer, dataclasses.replace(policy.config, keep_kv_cache=False))
    runs = [
        rollout(p, TwentyQuestions(max_turns=3), ParityJudge(), TARGETS, 2, seed=5, batch_size=2, progress=False)
        for p in (policy, uncached)
    ]
    for cached, plain in zip(*runs):
        assert cached.input_ids == plain.input_ids
        for a, b in zip(cached.turns, plain.turns):
            assert max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs)) < 1e-4


def test_batch_size_does_not_change_trajectories(policy):
    def run(batch_size):
        game = TwentyQuestions(max_turns=3)
        trajectories = rollout(policy, game, ParityJudge(), TARGETS, 2, seed=3, batch_size=batch_size, progress=False)
        return [t.input_ids for t in trajectories]

    assert run(1) == run(4)  # every game has its own random stream


def test_finished_games_stop_consuming_turns(policy):
    calls: list[int] = []
    sample = policy.sample

    def counting_sample(prompts, **kwargs):
        calls.append(len(prompts))
        return sample(prompts, **kwargs)

    policy.sample = counting_sample
    try:
        trajectories, stats = rollout_with_stats(
            policy, LabelGame(max_turns=3), FinishTargetJudge("apple"), TARGETS, 1, seed=0, progress=False
        )
    finally:
        del policy.sample
    apple, bus = trajectories
    assert apple.num_turns == 1 and apple.solved and apple.statuses() == ["finished"]
    assert bus.num_turns == 3 and not bus.solved and bus.statuses() == ["no", "no", "no"]
    assert calls == [2, 1, 1]  # game A took one sample, then only game B was sampled
    assert apple.turns[0].end_of_turn == len(apple.input_ids)
    assert (stats.num_games, stats.num_rounds, stats.num_policy_turns) == (2, 3, 4)
    assert stats.policy_tokens == sum(len(turn.token_ids) for t in trajectories for turn in t.turns)
    assert stats.metrics()["rollout/num_policy_turns"] == 4.0


def test_max_turns_overrides_the_game(policy):
    game = TwentyQuestions(max_turns=20)
    judge = ParityJudge()
    trajectories = rollout(policy, game, judge, TARGETS, 2, max_turns=2, seed=0, progress=False)
    assert [t.num_turns for t in trajectories] == [2, 2, 2, 2]
    assert "You have 2 questions." in trajectories[0].messages[0]["content"]
    assert game.max_turns == 20  # the caller's game is untouched
    assert len(judge.batches) <= 2  # at most one judge batch per round


def test_same_seed_same_trajectories_different_seed_differs(policy):
    def run(seed):
        game = TwentyQuestions(max_turns=2)
        trajectories = rollout(policy, game, ParityJudge(), TARGETS, 2, seed=seed, progress=False)
        return [(t.input_ids, [turn.logprobs for turn in t.turns]) for t in trajectories]

    first = run(7)
    assert run(7) == first
    assert [ids for ids, _ in run(8)] != [ids for ids, _ in first]


def test_moves_are_cut_after_the_first_question_mark(policy):
    trajectories = rollout(policy, TwentyQuestions(max_turns=2), ParityJudge(), TARGETS, 3, seed=4, progress=False)
    cut = 0
    for traj in trajectories:
        for turn in traj.turns:
            pieces = [policy.tokenizer.decode([t]) for t in turn.token_ids]
            assert all("?" not in p for p in pieces[:-1])
            cut += "?" in pieces[-1]
    assert cut > 0
