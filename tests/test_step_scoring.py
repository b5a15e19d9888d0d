"""Prefix-tree scoring of a step: the same beliefs, log π_old and gradients as the padded passes."""

from __future__ import annotations

import pytest
import torch

from deltabelief.belief import score_beliefs
from deltabelief.policy.chat import encode, observation_ids, pad_id, prompt_ids
from deltabelief.policy.loading import tiny_causal_lm
from deltabelief.training.logprobs import right_pad, token_logprobs
from deltabelief.training.prefix_tree import pack_with_paths, sequence_logprobs
from deltabelief.training.step_scoring import score_step
from deltabelief.trajectory import PolicyTurn, Trajectory
from deltabelief.types import Target

OPENING = [
    {"role": "system", "content": "You ask yes-or-no questions to find a secret word."},
    {"role": "user", "content": "Ask your first question."},
]


@pytest.fixture(scope="module")
def tiny():
    return tiny_causal_lm(seed=0)


def rollout(tokenizer, moves: list[str], target: str, sample_index: int = 0) -> Trajectory:
    """prompt | move_1 | obs_1 | … as rollouts build it; every rollout shares the prompt."""
    ids = prompt_ids(tokenizer, OPENING)
    prompt_length, turns = len(ids), []
    for t, move in enumerate(moves):
        move_ids = encode(tokenizer, move)
        span = (len(ids), len(ids) + len(move_ids))
        answer = "Yes." if t % 2 else "No."
        ids = ids + move_ids + observation_ids(tokenizer, answer)
        turns.append(PolicyTurn(move_ids, span, [0.0] * len(move_ids), move, answer, "yes", end_of_turn=len(ids)))
    return Trajectory(Target(id=target, task="twenty_questions", answer=target), 0, sample_index, ids,
                      prompt_length, turns)


def step_rollouts(tokenizer) -> list[Trajectory]:
    return [
        rollout(tokenizer, ["Is it alive?", "Is it a pet?", "Is it a cat?"], "cat", 0),
        rollout(tokenizer, ["Is it alive?", "Does it fly?"], "cat", 1),  # shares its first move with the one above
        rollout(tokenizer, [], "cat", 2),  # no move: only log b_0, which the two above also hang below h_0
        rollout(tokenizer, ["Is it made of metal?"] * 4, "ice cream", 0),
        rollout(tokenizer, ["Is it food?", "Is it cold?"], "ice cream", 1),
    ]


def padded_logprobs(model, trajectories, temperature: float) -> list[list[float]]:
    ids, attention = right_pad([t.input_ids for t in trajectories], 0)
    score, _ = right_pad([t.response_mask() for t in trajectories], 0)
    with torch.no_grad():
        values = token_logprobs(model.eval(), ids, attention, score, temperature=temperature)
    return [values[i, : len(t.input_ids)].tolist() for i, t in enumerate(trajectories)]


@pytest.mark.parametrize("max_tokens", [4096, 64])  # one row for the step; a row per rollout (or more)
@pytest.mark.parametrize("template", ["Is it '{target}'?", "{target}"])  # an empty prefix reads y_1 off h_t itself
def test_one_tree_forward_gives_the_padded_beliefs_and_old_logprobs(tiny, max_tokens, template):
    model, tokenizer = tiny
    trajectories = step_rollouts(tokenizer)
    scores, old = score_step(model, tokenizer, trajectories, template, temperature=0.7, max_tokens=max_tokens)
    reference = score_beliefs(model, tokenizer, trajectories, template, batch_size=2)
    assert torch.equal(scores.mask, reference.mask)
    torch.testing.assert_close(scores.log_beliefs, reference.log_beliefs, atol=1e-4, rtol=0)
    expected = padded_logprobs(model, trajectories, 0.7)
    for got, want, traj in zip(old, expected, trajectories):
        assert len(got) == len(traj.input_ids)
        assert [g != 0 for g in got] == [bool(m) for m in traj.response_mask()]  # only the moves are scored
        torch.testing.assert_close(torch.tensor(got), torch.tensor(want), atol=1e-5, rtol=0)


def test_without_old_logprobs_only_beliefs_come_back(tiny):
    model, tokenizer = tiny
    scores, old = score_step(model, tokenizer, step_rollouts(tokenizer), "Is it '{target}'?", old_logprobs=False)
    assert old is None and scores.mask.sum() == 4 + 3 + 1 + 5 + 3


def test_unlocatable_targets_are_excluded_but_their_moves_still_scored(tiny):
    model, tokenizer = tiny
    trajectories = step_rollouts(tokenizer)[:2]
    trajectories[1] = rollout(tokenizer, ["Is it alive?"], " ", 0)  # a target with no tokens of its own
    scores, old = score_step(model, tokenizer, trajectories, "Is it '{target}'?", on_unlocatable="exclude")
    assert [e.index for e in scores.excluded] == [1] and not scores.mask[1].any()
    assert sum(1 for v in old[1] if v != 0) == sum(trajectories[1].response_mask())


def test_rows_hold_a_shared_prompt_once(tiny):
    _, tokenizer = tiny
    trajectories = step_rollouts(tokenizer)
    sequences = [t.input_ids for t in trajectories]
    rows, placements = pack_with_paths(sequences, [t.response_mask() for t in trajectories], max_tokens=4096)
    prompt = trajectories[0].prompt_length
    assert len(rows) == 1 and len(rows[0]) < sum(len(s) for s in sequences) - 3 * prompt
    assert all(path[:prompt] == placements[0][1][:prompt] for _, path in placements)  # one set of prompt nodes
    assert [rows[0].ids[n] for n in placements[3][1]] == sequences[3]


def test_tree_logprobs_and_their_gradients_equal_the_padded_ones(tiny):
    model, tokenizer = tiny
    trajectories = step_rollouts(tokenizer)
    sequences, masks = [t.input_ids for t in trajectories], [t.response_mask() for t in trajectories]
    weights = torch.linspace(-1.0, 2.0, max(len(s) for s in sequences))  # any per-position weights

    def loss_and_grads(logprobs_of):
        model.zero_grad(set_to_none=True)
        values = logprobs_of()  # [B, L]
        (values * weights).sum().backward()
        return values.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    model.train()
    tree, tree_grads = loss_and_grads(lambda: sequence_logprobs(model, sequences, masks, pad_id(tokenizer),
                                                                max_tokens=4096, temperature=0.7))
    ids, attention = right_pad(sequences, pad_id(tokenizer))
    score, _ = right_pad(masks, 0)
    padded, padded_grads = loss_and_grads(lambda: token_logprobs(model, ids, attention, score, temperature=0.7))
    model.eval()
    torch.testing.assert_close(tree, padded, atol=1e-5, rtol=0)
    assert tree_grads.keys() == padded_grads.keys()
    for name in tree_grads:
        torch.testing.assert_close(tree_grads[name], padded_grads[name], atol=1e-5, rtol=1e-4)
