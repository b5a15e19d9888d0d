"""The fast sampler against the legacy one and against a plain forward, on a tiny random Llama."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from deltabelief.config import LoraConfig, PolicyConfig
from deltabelief.games.twenty_questions import TwentyQuestions
from deltabelief.policy.fast_decoder import FastDecoder
from deltabelief.policy.fast_sampling import DecodeSession, common_prefix_length
from deltabelief.policy.kv_slab import KVSlab
from deltabelief.policy.loading import tiny_causal_lm
from deltabelief.policy.lora import apply_lora
from deltabelief.policy.policy import Policy
from deltabelief.rollout import rollout
from deltabelief.types import JudgeReply, JudgeRequest, Target

TARGETS = [Target(id=f"t{i}", task="twenty_questions", answer=name) for i, name in enumerate(["apple", "bus", "cow"])]


class ParityJudge:
    name = "parity"

    def answer_batch(self, requests: list[JudgeRequest]) -> list[JudgeReply]:
        return [JudgeReply(label="yes" if len(r.move) % 2 == 0 else "no") for r in requests]


class SolveOnLengthJudge:
    """'finished' for moves of a length divisible by 5: games end at different rounds."""

    name = "solve-on-length"

    def answer_batch(self, requests: list[JudgeRequest]) -> list[JudgeReply]:
        return [JudgeReply(label="finished" if len(r.move) % 5 == 0 else "no") for r in requests]


def question_biased_tiny(seed: int = 0, bias: float = 6.0):
    """A tiny random Llama whose output head has a bias towards '?', so moves end at varied lengths."""
    model, tokenizer = tiny_causal_lm(seed)
    head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
    head.weight = model.lm_head.weight
    with torch.no_grad():
        head.bias.zero_()
        head.bias[tokenizer.convert_tokens_to_ids("?")] = bias
    model.lm_head = head
    return model.eval(), tokenizer


@pytest.fixture(scope="module")
def model_and_tokenizer():
    return question_biased_tiny()


def policy_with(model_and_tokenizer, sampler: str, batch_size: int = 16) -> Policy:
    model, tokenizer = model_and_tokenizer
    return Policy(model, tokenizer, PolicyConfig(model="tiny", max_new_tokens=12, batch_size=batch_size, sampler=sampler))


def assert_same_rollouts(first, second, tolerance=1e-4):
    for a, b in zip(first, second, strict=True):
        assert a.input_ids == b.input_ids
        assert [t.span for t in a.turns] == [t.span for t in b.turns]
        for x, y in zip(a.turns, b.turns):
            assert max((abs(p - q) for p, q in zip(x.logprobs, y.logprobs)), default=0.0) < tolerance


@pytest.mark.parametrize("batch_size", [16, 4])
@pytest.mark.parametrize("judge", [ParityJudge(), SolveOnLengthJudge()], ids=["parity", "finishing"])
def test_fast_sampler_reproduces_the_legacy_rollouts(model_and_tokenizer, batch_size, judge):
    fast, legacy = (policy_with(model_and_tokenizer, s, batch_size) for s in ("fast", "legacy"))
    assert fast.decode_session() is not None and legacy.decode_session() is None
    for seed in (0, 1):
        runs = [rollout(p, TwentyQuestions(max_turns=4), judge, TARGETS, 3, seed=seed, progress=False)
                for p in (fast, legacy)]
        assert_same_rollouts(*runs)
        lengths = {len(t.token_ids) for traj in runs[0] for t in traj.turns}
        assert len(lengths) > 2  # rows stopped at different steps (gathering to the front ran)


def test_fast_logprobs_match_a_fresh_forward_over_the_whole_conversation(model_and_tokenizer):
    model, _ = model_and_tokenizer
    trajectories = rollout(policy_with(model_and_tokenizer, "fast"), TwentyQuestions(max_turns=3), ParityJudge(),
                           TARGETS, 2, seed=2, progress=False)
    for traj in trajectories:
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([traj.input_ids])).logits[0].float(), dim=-1)
        for turn in traj.turns:
            start, end = turn.span
            fresh = logp[start - 1 : end - 1].gather(-1, torch.tensor(turn.token_ids)[:, None]).squeeze(-1)
            assert torch.allclose(fresh, torch.tensor(turn.logprobs), atol=1e-4)


def test_decoder_equals_the_transformers_forward_for_uneven_rows_and_after_a_weight_change():
    model, _ = tiny_causal_lm(3)
    decoder = FastDecoder(model)
    conversations = [[5, 9, 2, 7, 1, 3], [8, 8], [4, 6, 1, 2, 9, 9, 9, 3, 2, 5]]
    slab = decoder.new_slab()
    slab.add_rows(3)

    def reference(ids):
        with torch.no_grad():
            return model(input_ids=torch.tensor([ids])).logits[0, -1]

    # Feed the conversations in two uneven pieces per row, the second one with a row feeding nothing.
    first = [c[:2] for c in conversations]
    decoder.forward(slab, slice(0, 3), torch.tensor(sum(first, [])), torch.tensor([2, 2, 2]))
    second = [c[2:] for c in conversations]
    hidden = decoder.forward(slab, slice(0, 3), torch.tensor(sum(second, [])), torch.tensor([len(s) for s in second]))
    assert hidden.shape[0] == 2  # row 1 fed no token
    logits = decoder.logits(hidden)
    for row, conversation in zip([0, 2], [conversations[0], conversations[2]]):
        assert torch.allclose(logits[[0, 2].index(row)], reference(conversation), atol=1e-4)
    assert slab.lengths.tolist() == [len(c) for c in conversations]

    with torch.no_grad():
        model.lm_head.weight.mul_(1.5)  # an optimizer step changes weights in place
    decoder.refresh()
    fresh = decoder.new_slab()
    fresh.add_rows(1)
    logits = decoder.logits(decoder.forward(fresh, slice(0, 1), torch.tensor(conversations[2]), torch.tensor([10])))
    assert torch.allclose(logits[0], reference(conversations[2]), atol=1e-4)


def test_each_rollout_packs_the_current_weights_even_after_a_fused_optimizer_step():
    model, tokenizer = question_biased_tiny(seed=4)
    fast = Policy(model, tokenizer, PolicyConfig(model="tiny", max_new_tokens=12, sampler="fast"))
    legacy = Policy(model, tokenizer, dataclasses.replace(fast.config, sampler="legacy"))
    fast.decode_session()  # packs the initial weights
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05, fused=True)  # bumps no tensor version
    model(input_ids=torch.tensor([[1, 4093, 198]])).logits.sum().backward()
    optimizer.step()
    runs = [rollout(p, TwentyQuestions(max_turns=2), ParityJudge(), TARGETS, 2, seed=0, progress=False)
            for p in (fast, legacy)]
    assert_same_rollouts(*runs)


def test_slab_rows_swap_keep_and_grow():
    slab = KVSlab(num_layers=1, kv_heads=1, head_dim=2, dtype=torch.float32, device="cpu")
    slab.add_rows(3)
    slab.reserve(4)
    for row in range(3):
        slab.keys[0][row] = row
    slab.lengths[:] = torch.tensor([1, 2, 3])
    slab.swap_rows([0], [2])
    assert slab.lengths.tolist() == [3, 2, 1] and slab.keys[0][0, 0, 0, 0] == 2
    slab.reserve(300)
    assert slab.capacity == 512 and slab.keys[0][0, 0, 3, 0] == 2  # growth keeps what was written
    slab.keep_rows([1])
    assert slab.lengths.tolist() == [2] and slab.keys[0].shape[0] == 1


def test_session_refuses_a_conversation_that_does_not_extend_what_was_fed(model_and_tokenizer):
    session = policy_with(model_and_tokenizer, "fast").decode_session()
    assert isinstance(session, DecodeSession)
    generators = [torch.Generator().manual_seed(0)]
    session.sample(["a"], [[1, 4093, 198]], generators)
    with pytest.raises(ValueError, match="does not extend"):
        session.sample(["a"], [[1, 4094, 198, 5]], generators)


def test_lora_models_and_legacy_settings_use_the_legacy_sampler(model_and_tokenizer):
    model, tokenizer = tiny_causal_lm(0)
    lora = Policy(apply_lora(model, LoraConfig(enabled=True, r=4, alpha=4)), tokenizer, PolicyConfig(model="tiny"))
    assert lora.decode_session() is None
    fast = policy_with(model_and_tokenizer, "fast")
    fast.config = dataclasses.replace(fast.config, keep_kv_cache=False)
    assert fast.decode_session() is None


def test_common_prefix_length():
    assert common_prefix_length([[1, 2, 3], [1, 2, 4], [1, 2]]) == 2
    assert common_prefix_length([[1], [2]]) == 0
