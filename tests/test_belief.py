"""Belief scoring: packed == per-prefix, elicitation tokens, unlocatable targets, ΔBelief guard."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from deltabelief.belief import (
    UnlocatableTargetError,
    _collate,
    _pack,
    build_elicitation,
    delta_beliefs,
    packed_attention_mask,
    score_beliefs,
    score_beliefs_per_prefix,
    turn_ends,
)
from deltabelief.games.base import Target
from deltabelief.policy.chat import encode, observation_ids, prompt_ids
from deltabelief.policy.loading import tiny_causal_lm
from deltabelief.trajectory import PolicyTurn, Trajectory

OPENING = [
    {"role": "system", "content": "You ask yes-or-no questions to find a secret word."},
    {"role": "user", "content": "Ask your first question."},
]


@pytest.fixture(scope="module")
def tiny():
    return tiny_causal_lm(seed=0)


def make_trajectory(tokenizer, num_turns: int, target: str = "cat", sample_index: int = 0) -> Trajectory:
    """prompt | move_1 | obs_1 | … | move_N | obs_N built from the chat template, as rollouts do."""
    ids = prompt_ids(tokenizer, OPENING)
    prompt_length = len(ids)
    turns = []
    for t in range(num_turns):
        move, answer = f"Is it bigger than object {t}?", ("Yes." if t % 3 else "No.")
        move_ids = encode(tokenizer, move)
        span = (len(ids), len(ids) + len(move_ids))
        ids = ids + move_ids + observation_ids(tokenizer, answer)
        turns.append(PolicyTurn(move_ids, span, [0.0] * len(move_ids), move, answer, "yes", end_of_turn=len(ids)))
    return Trajectory(Target(id=target, task="twenty_questions", target=target), 0, sample_index, ids,
                      prompt_length, turns)


def test_trajectory_layout_matches_chat_rendering(tiny):
    _, tokenizer = tiny
    traj = make_trajectory(tokenizer, 2)
    messages = list(OPENING)
    for turn in traj.turns:
        messages += [{"role": "assistant", "content": turn.move}, {"role": "user", "content": turn.answer}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert traj.input_ids == encode(tokenizer, rendered)
    assert tokenizer.decode(traj.input_ids[: traj.turns[0].end_of_turn]).endswith("<|im_start|>assistant\n")


@pytest.mark.parametrize("template", ["Is it '{target}'?", "My guess is: {target}", "{target}"])
def test_packed_equals_per_prefix(tiny, template):
    model, tokenizer = tiny
    trajs = [make_trajectory(tokenizer, 1, "cat"), make_trajectory(tokenizer, 5, "elephant"),
             make_trajectory(tokenizer, 20, "ice cream"), make_trajectory(tokenizer, 0, "dog")]
    packed = score_beliefs(model, tokenizer, trajs, template, batch_size=3)
    slow = score_beliefs_per_prefix(model, tokenizer, trajs, template)
    assert packed.mask.sum(dim=1).tolist() == [2, 6, 21, 1]  # N+1 scored values each
    assert torch.equal(packed.mask, slow.mask)
    assert torch.allclose(packed.log_beliefs, slow.log_beliefs, atol=1e-4)
    assert (packed.log_beliefs[packed.mask] < 0).all()
    assert packed.num_target_tokens.tolist() == slow.num_target_tokens.tolist()
    assert [len(v) for v in packed.per_trajectory()] == [2, 6, 21, 1]


def test_packed_is_independent_of_batching_and_attention(tiny):
    model, tokenizer = tiny
    trajs = [make_trajectory(tokenizer, n, "owl", i) for i, n in enumerate([3, 7, 1])]
    one = score_beliefs(model, tokenizer, trajs, batch_size=1)
    many = score_beliefs(model, tokenizer, trajs, batch_size=8)
    assert torch.allclose(one.log_beliefs, many.log_beliefs, atol=1e-5)
    eager, _ = tiny_causal_lm(seed=0)
    eager.set_attn_implementation("eager")
    assert torch.allclose(score_beliefs(eager, tokenizer, trajs).log_beliefs, one.log_beliefs, atol=1e-4)


def test_batched_rows_align_their_suffix_blocks(tiny):
    _, tokenizer = tiny
    elicitation = build_elicitation(tokenizer, "Is it '{target}'?", "cat")
    short, long = make_trajectory(tokenizer, 2), make_trajectory(tokenizer, 2)
    long.input_ids = long.input_ids[: long.prompt_length] + [42] * 5 + long.input_ids[long.prompt_length:]
    long.turns = [dataclasses.replace(t, end_of_turn=t.end_of_turn + 5) for t in long.turns]
    packs = [_pack(short, elicitation), _pack(long, elicitation)]
    batch = _collate(packs, pad_id=0)
    # same N and K: the suffix blocks end at the last column, so both rows read the same columns
    assert torch.equal(batch["reads"][0], batch["reads"][1])
    assert batch["ids"][0, -len(elicitation.ids):].tolist() == elicitation.ids
    assert (batch["ids"][0, packs[0].history : packs[0].history + 5] == 0).all()  # the padding sits in between


def test_log_belief_is_sum_of_target_token_logprobs(tiny):
    model, tokenizer = tiny
    traj = make_trajectory(tokenizer, 2, "ice cream")
    scores = score_beliefs(model, tokenizer, [traj], "Is it '{target}'?")
    # By hand for t = 1: h_1 = input_ids[:e_1], then "Is it '" and the target "ice"+" cream".
    prefix, target = encode(tokenizer, "Is it '"), encode(tokenizer, "ice cream")
    assert len(target) == 2
    end = traj.turns[0].end_of_turn
    ids = torch.tensor([traj.input_ids[:end] + prefix + target])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
    first = end + len(prefix)
    expected = logprobs[first - 1, target[0]] + logprobs[first, target[1]]  # log π(y_1|…) + log π(y_2|…, y_1)
    assert scores.log_beliefs[0, 1].item() == pytest.approx(expected.item(), abs=1e-4)


def test_model_mode_is_restored(tiny):
    model, tokenizer = tiny
    model.train()
    try:
        score_beliefs(model, tokenizer, [make_trajectory(tokenizer, 1)])
        assert model.training
    finally:
        model.eval()


def test_elicitation_moves_leading_space_onto_target(tiny):
    _, tokenizer = tiny
    spaced = build_elicitation(tokenizer, "My guess is: {target}", "cat")
    assert tokenizer.decode(list(spaced.target_ids)) == " cat"  # the word-with-space token, as in whole text
    assert spaced.ids == encode(tokenizer, "My guess is: cat")
    assert spaced.matches_whole_text
    quoted = build_elicitation(tokenizer, "Is it '{target}'?", "cat")
    assert tokenizer.decode(list(quoted.target_ids)) == "cat"
    assert quoted.matches_whole_text


def test_tokenization_mismatch_is_reported(tiny):
    model, tokenizer = tiny
    # "?" before "'?" merges differently in the whole text than piecewise.
    assert not build_elicitation(tokenizer, "Is it '{target}'?", "x?").matches_whole_text
    trajs = [make_trajectory(tokenizer, 1, "x?"), make_trajectory(tokenizer, 1, "cat")]
    scores = score_beliefs(model, tokenizer, trajs)
    assert scores.tokenization_mismatches == ["x?"]
    assert scores.mask.all()  # still scored, piecewise


@pytest.mark.parametrize(
    ("template", "target", "reason"),
    [("What is your guess?", "cat", "exactly once"), ("{target} or {target}", "cat", "exactly once"),
     ("Is it '{target}'?", "  ", "empty")],
)
def test_unlocatable_target_raises(tiny, template, target, reason):
    model, tokenizer = tiny
    with pytest.raises(UnlocatableTargetError, match=reason) as info:
        score_beliefs(model, tokenizer, [make_trajectory(tokenizer, 1, target)], template)
    assert repr(target) in str(info.value) and repr(template) in str(info.value)


def test_unlocatable_target_excluded_and_reported(tiny):
    model, tokenizer = tiny
    trajs = [make_trajectory(tokenizer, 2, "cat"), make_trajectory(tokenizer, 3, "", sample_index=7)]
    scores = score_beliefs(model, tokenizer, trajs, on_unlocatable="exclude")
    assert [(e.index, e.target_id, e.sample_index) for e in scores.excluded] == [(1, "", 7)]
    assert "empty" in scores.excluded[0].reason
    assert scores.mask.tolist() == [[True, True, True, False], [False] * 4]
    assert scores.num_target_tokens[1].item() == 0
    with pytest.raises(ValueError, match="on_unlocatable"):
        score_beliefs(model, tokenizer, trajs, on_unlocatable="skip")


def test_turn_ends_rejects_bad_records(tiny):
    _, tokenizer = tiny
    traj = make_trajectory(tokenizer, 2)
    assert turn_ends(traj) == [traj.prompt_length, traj.turns[0].end_of_turn, traj.turns[1].end_of_turn]
    traj.turns[1].end_of_turn = 0  # never set by the rollout
    with pytest.raises(ValueError, match=r"turns\[1\].end_of_turn=0"):
        turn_ends(traj)


def test_packed_attention_mask_pattern():
    # history of 3 tokens (e_0 = 1, e_1 = 3), suffix_0 at 3..4 sees [0, 1), suffix_1 at 5..6 sees [0, 3); pad at 7.
    start = torch.tensor([[0, 0, 0, 3, 3, 5, 5, 7]])
    context = torch.tensor([[0, 0, 0, 1, 1, 3, 3, 0]])
    allowed = packed_attention_mask(start, context, torch.float32)[0, 0] == 0
    expected = torch.tensor([
        [1, 0, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0, 0],
        [1, 0, 0, 1, 0, 0, 0, 0],
        [1, 0, 0, 1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0, 1, 0, 0],
        [1, 1, 1, 0, 0, 1, 1, 0],
        [0, 0, 0, 0, 0, 0, 0, 1],
    ], dtype=torch.bool)
    assert torch.equal(allowed, expected)


def test_delta_beliefs_by_hand():
    log_b = torch.tensor([[-5.0, -4.0, -4.5, -1.0], [-3.0, -2.0, 0.0, 0.0], [-2.0, float("nan"), -1.0, float("-inf")]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    out = delta_beliefs(log_b, mask)
    # row 0: -4 - -5 = 1, -4.5 - -4 = -0.5, -1 - -4.5 = 3.5
    # row 1: one turn: -2 - -3 = 1; turns 2, 3 not scored -> 0
    # row 2: nan - -2 = nan, -1 - nan = nan, -inf - -1 = -inf -> all zeroed and counted
    assert out.delta.tolist() == [[1.0, -0.5, 3.5], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    assert out.positive.tolist() == [[1.0, 0.0, 3.5], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    assert out.turn_mask.tolist() == [[True] * 3, [True, False, False], [True] * 3]
    assert out.num_nonfinite == 3
    assert all(math.isfinite(v) for v in out.delta.flatten().tolist())


def test_delta_beliefs_shape_checked():
    with pytest.raises(ValueError, match=r"\[B, T\+1\]"):
        delta_beliefs(torch.zeros(2, 3), torch.ones(2, 4, dtype=torch.bool))
