"""Chat pieces, batched sampling, LoRA and the Policy object, on SmolLM2's tokenizer and a tiny model."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from deltabelief.config import LoraConfig, PolicyConfig
from deltabelief.policy import chat
from deltabelief.policy.loading import load_tokenizer, tiny_causal_lm
from deltabelief.policy.lora import apply_lora
from deltabelief.policy.policy import Policy
from deltabelief.policy.sampling import (
    SamplingParams,
    StopTokens,
    filter_logits,
    inverse_cdf,
    left_pad,
    sample_batch,
)

OPENING = [
    {"role": "system", "content": "You ask yes/no questions."},
    {"role": "user", "content": "Guess my thing."},
]


class BiasedLM(torch.nn.Module):
    """A model whose logits get a fixed bias [V]: makes '?' or eos likely in a random tiny model."""

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


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("tiny")


@pytest.fixture(scope="module")
def stops(tokenizer):
    return StopTokens.for_tokenizer(tokenizer, len(tokenizer))


def biased_tiny(tokenizer, token: str, bias: float, seed: int = 0):
    model, _ = tiny_causal_lm(seed)
    vector = torch.zeros(len(tokenizer))
    vector[tokenizer.convert_tokens_to_ids(token)] = bias
    return BiasedLM(model, vector).eval()


def fresh_logprobs(model, prompt: list[int], tokens: list[int], temperature=1.0, top_k=0, top_p=1.0) -> list[float]:
    """Log-probs of ``tokens`` after ``prompt`` from one unpadded forward pass, no cache."""
    ids = torch.tensor([prompt + tokens])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float()  # [n, V]
    logp = torch.log_softmax(filter_logits(logits / temperature, top_k, top_p), dim=-1)
    return logp.gather(-1, torch.tensor(tokens)[:, None]).squeeze(-1).tolist()


# ---------------------------------------------------------------- chat


def test_template_pieces_on_smollm2(tokenizer):
    assert tokenizer.decode(chat.assistant_header_ids(tokenizer)) == "<|im_start|>assistant\n"
    assert tokenizer.decode(chat.end_of_turn_ids(tokenizer)) == "<|im_end|>\n"
    observation = "<|im_end|>\n<|im_start|>user\nNo.<|im_end|>\n<|im_start|>assistant\n"
    assert chat.observation_text(tokenizer, "No.") == observation
    assert chat.observation_ids(tokenizer, "No.") == chat.encode(tokenizer, chat.observation_text(tokenizer, "No."))
    # <|im_start|>=1, <|im_end|>=2 and '\n'=198 in SmolLM2's vocabulary.
    assert chat.observation_ids(tokenizer, "No.")[:2] == [2, 198]
    assert chat.assistant_header_ids(tokenizer)[0] == 1
    expected = (
        "<|im_start|>system\nYou ask yes/no questions.<|im_end|>\n"
        "<|im_start|>user\nGuess my thing.<|im_end|>\n<|im_start|>assistant\n"
    )
    assert chat.prompt_ids(tokenizer, OPENING) == chat.encode(tokenizer, expected)


def test_concatenated_pieces_equal_the_rendered_conversation(tokenizer):
    moves = [("Is it alive?", "No."), ("Is it bigger than a car?", "Yes."), ("Is it a house?", "Yes! Solved.")]
    ids = chat.prompt_ids(tokenizer, OPENING)
    messages = list(OPENING)
    for move, answer in moves:
        ids += chat.encode(tokenizer, move) + chat.observation_ids(tokenizer, answer)
        messages += [{"role": "assistant", "content": move}, {"role": "user", "content": answer}]
    assert ids == chat.prompt_ids(tokenizer, messages)


def test_prompt_needs_messages(tokenizer):
    with pytest.raises(ValueError, match="at least one message"):
        chat.prompt_ids(tokenizer, [])


# ---------------------------------------------------------------- sampling math


def test_filter_logits_top_k_and_top_p():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    top2 = filter_logits(logits, top_k=2, top_p=1.0)
    assert top2[0, :2].tolist() == [2.0, 1.0] and torch.isinf(top2[0, 2:]).all()
    # probs 0.5, 0.3, 0.2: mass before each = 0, 0.5, 0.8.
    nucleus = torch.log(torch.tensor([[0.5, 0.3, 0.2]]))
    kept = torch.isfinite(filter_logits(nucleus, top_k=0, top_p=0.7))[0].tolist()
    assert kept == [True, True, False]  # 0.5 < 0.7 keeps the second; 0.8 >= 0.7 drops the third
    assert torch.isfinite(filter_logits(nucleus, 0, 0.5))[0].tolist() == [True, False, False]
    assert torch.isfinite(filter_logits(nucleus, 0, 1.0)).all()


def test_inverse_cdf_never_draws_zero_probability_and_matches_frequencies():
    probs = torch.tensor([[0.0, 0.2, 0.0, 0.5, 0.3]]).repeat(20000, 1)
    draws = inverse_cdf(probs, torch.Generator().manual_seed(0))
    counts = torch.bincount(draws, minlength=5).float() / len(draws)
    assert counts[0] == 0 and counts[2] == 0
    assert torch.allclose(counts, torch.tensor([0.0, 0.2, 0.0, 0.5, 0.3]), atol=0.015)


def test_left_pad_and_sampling_params_checks():
    ids, mask = left_pad([[5, 6, 7], [8]], pad_id=0, device="cpu")
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0.0)
    with pytest.raises(ValueError, match="at least one token"):
        left_pad([[1], []], 0, "cpu")


# ---------------------------------------------------------------- sampling with a model


def test_cut_to_one_question_and_logprobs_match_fresh_forward(tokenizer, stops):
    model = biased_tiny(tokenizer, "?", 9.0)
    prompts = [chat.prompt_ids(tokenizer, OPENING), chat.prompt_ids(tokenizer, OPENING[1:]), [1, 4093, 198]]
    params = SamplingParams(temperature=1.0, max_new_tokens=24)
    generator = torch.Generator().manual_seed(3)
    samples = sample_batch(model, tokenizer, prompts * 2, params, generator=generator, stops=stops)
    assert {s.stop_reason for s in samples} >= {"question"}
    assert len({len(s.token_ids) for s in samples}) > 1  # rows stopped at different steps (batch pruning ran)
    for prompt, sample in zip(prompts * 2, samples):
        texts = [tokenizer.decode([t]) for t in sample.token_ids]
        assert all("?" not in t for t in texts[:-1])
        if sample.stop_reason == "question":
            assert "?" in texts[-1]
        else:
            assert sample.stop_reason == "length" and len(sample.token_ids) == 24
        assert sample.text == tokenizer.decode(sample.token_ids)
        fresh = fresh_logprobs(model, prompt, sample.token_ids)
        assert max(abs(a - b) for a, b in zip(fresh, sample.logprobs)) < 1e-4


def test_logprobs_are_under_the_filtered_tempered_distribution(tokenizer, stops):
    model = biased_tiny(tokenizer, "?", 4.0)
    prompt = chat.prompt_ids(tokenizer, OPENING)
    params = SamplingParams(temperature=0.7, top_k=20, top_p=0.8, max_new_tokens=12)
    generator = torch.Generator().manual_seed(0)
    (sample,) = sample_batch(model, tokenizer, [prompt], params, generator=generator, stops=stops)
    fresh = fresh_logprobs(model, prompt, sample.token_ids, temperature=0.7, top_k=20, top_p=0.8)
    assert max(abs(a - b) for a, b in zip(fresh, sample.logprobs)) < 1e-4
    assert all(math.isfinite(x) and x <= 0 for x in sample.logprobs)


def test_eos_stops_without_being_included(tokenizer, stops):
    model = biased_tiny(tokenizer, "<|im_end|>", 30.0)
    (sample,) = sample_batch(
        model, tokenizer, [[1, 4093, 198]], SamplingParams(), generator=torch.Generator().manual_seed(0), stops=stops
    )
    assert sample.token_ids == [] and sample.logprobs == [] and sample.text == "" and sample.stop_reason == "eos"


def test_padding_does_not_change_a_row_greedy(tokenizer, stops):
    model, _ = tiny_causal_lm(1)
    short, long = [1, 4093, 198], chat.prompt_ids(tokenizer, OPENING)
    greedy = SamplingParams(temperature=0.0, max_new_tokens=8)
    gen = torch.Generator().manual_seed(0)
    (alone,) = sample_batch(model, tokenizer, [short], greedy, generator=gen, stops=stops)
    batched = sample_batch(model, tokenizer, [long, short], greedy, generator=gen, stops=stops)
    assert batched[1].token_ids == alone.token_ids
    assert max(abs(a - b) for a, b in zip(batched[1].logprobs, alone.logprobs)) < 1e-4


def test_resuming_from_prefix_caches_matches_running_the_whole_prompt(tokenizer, stops):
    model = biased_tiny(tokenizer, "?", 9.0, seed=2)
    greedy, sampled = SamplingParams(temperature=0.0, max_new_tokens=10), SamplingParams(max_new_tokens=10)
    first_prompts = [chat.prompt_ids(tokenizer, OPENING), [1, 4093, 198]]
    first = sample_batch(
        model, tokenizer, first_prompts, sampled, generator=torch.Generator().manual_seed(0), stops=stops,
        keep_cache=True,
    )
    # The cache covers the prompt and every fed token: all drawn tokens but a final '?'/length one.
    for prompt, sample in zip(first_prompts, first):
        assert sample.cache.length == len(prompt) + len(sample.token_ids) - (sample.stop_reason != "eos")
        assert sample.cache.layers[0][0].shape[2] == sample.cache.length
    second = [p + s.token_ids + chat.observation_ids(tokenizer, "No.") for p, s in zip(first_prompts, first)]
    second.append(chat.prompt_ids(tokenizer, OPENING[1:]))  # a row with no cache, in the same batch
    for params in (greedy, sampled):
        resumed = sample_batch(
            model, tokenizer, second, params, generator=torch.Generator().manual_seed(1), stops=stops,
            prefixes=[first[0].cache, first[1].cache, None],
        )
        full = sample_batch(model, tokenizer, second, params, generator=torch.Generator().manual_seed(1), stops=stops)
        for a, b, prompt in zip(resumed, full, second):
            assert a.token_ids == b.token_ids
            assert max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs)) < 1e-4
            fresh = fresh_logprobs(model, prompt, a.token_ids)
            assert max(abs(x - y) for x, y in zip(fresh, a.logprobs)) < 1e-4
    with pytest.raises(ValueError, match="row 0: prefix cache covers"):
        sample_batch(
            model, tokenizer, [first_prompts[0][:3]], greedy, generator=torch.Generator(), prefixes=[first[0].cache]
        )


def test_per_row_generators_make_a_row_independent_of_its_batch(tokenizer, stops):
    model = biased_tiny(tokenizer, "?", 7.0, seed=1)
    short, long = [1, 4093, 198], chat.prompt_ids(tokenizer, OPENING)
    params = SamplingParams(max_new_tokens=12)

    def gens(*seeds):
        return [torch.Generator().manual_seed(s) for s in seeds]

    (alone,) = sample_batch(model, tokenizer, [short], params, generator=gens(11), stops=stops)
    batched = sample_batch(model, tokenizer, [long, short, long], params, generator=gens(5, 11, 6), stops=stops)
    assert batched[1].token_ids == alone.token_ids
    assert batched[0].token_ids != batched[2].token_ids  # same prompt, own streams
    with pytest.raises(ValueError, match="3 rows but 2 generators"):
        sample_batch(model, tokenizer, [short] * 3, params, generator=gens(1, 2), stops=stops)


def test_same_generator_seed_same_samples(tokenizer, stops):
    model, _ = tiny_causal_lm(0)
    prompts = [[1, 4093, 198], chat.prompt_ids(tokenizer, OPENING)]
    params = SamplingParams(max_new_tokens=6)

    def run(seed):
        generator = torch.Generator().manual_seed(seed)
        return [s.token_ids for s in sample_batch(model, tokenizer, prompts, params, generator=generator, stops=stops)]

    assert run(5) == run(5)
    assert run(5) != run(6)


# ---------------------------------------------------------------- LoRA and Policy


def _trainable(model) -> dict[str, int]:
    return {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}


def test_lora_all_linear_trains_only_adapters():
    model, _ = tiny_causal_lm(0)
    wrapped = apply_lora(model, LoraConfig(enabled=True, r=4, alpha=8, target_modules="all-linear"))
    trainable = _trainable(wrapped)
    assert trainable and all("lora_" in name for name in trainable)
    # Per layer, r * (in + out): q 4*(64+64), k 4*(64+32), v 4*(64+32), o 4*(64+64),
    # gate 4*(64+128), up 4*(64+128), down 4*(128+64) = 512+384+384+512+768+768+768 = 4096; 2 layers.
    assert sum(trainable.values()) == 8192


def test_lora_module_list_and_disabled():
    model, _ = tiny_causal_lm(0)
    wrapped = apply_lora(model, LoraConfig(enabled=True, r=4, alpha=4, target_modules="q_proj, v_proj"))
    assert sum(_trainable(wrapped).values()) == 2 * (512 + 384)
    plain, _ = tiny_causal_lm(0)
    assert apply_lora(plain, LoraConfig(enabled=False)) is plain
    with pytest.raises(ValueError, match="empty"):
        apply_lora(plain, LoraConfig(enabled=True, target_modules=" , "))


def test_policy_sampling_settings_and_save_roundtrip(tmp_path):
    config = PolicyConfig(model="tiny", max_new_tokens=7, batch_size=2, lora=LoraConfig(enabled=True, r=4, alpha=8))
    policy = Policy.from_config(config, seed=0)
    assert policy.device.type == "cpu"
    assert policy.sampling_params(eval_mode=True) == SamplingParams(0.7, 0.8, 20, 7)
    assert policy.sampling_params() == SamplingParams(1.0, 1.0, 0, 7)
    stops = policy.stop_tokens()
    assert stops.eos_ids == {2}  # <|im_end|>: eos, generation-config eos and end-of-turn marker at once
    assert int(stops.question.sum()) == 30  # SmolLM2 has 30 tokens whose text contains '?'
    assert bool(stops.question[policy.tokenizer.convert_tokens_to_ids("?")])
    samples = policy.sample([[1, 4093, 198]] * 3, generator=torch.Generator().manual_seed(0))
    assert len(samples) == 3 and all(len(s.token_ids) <= 7 for s in samples)
    with torch.no_grad():  # make the adapters matter before merging
        for name, param in policy.model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05, generator=torch.Generator().manual_seed(1))
    ids = torch.tensor([chat.prompt_ids(policy.tokenizer, OPENING)])
    with torch.no_grad():
        expected = policy.model(input_ids=ids).logits
    policy.save(tmp_path / "saved")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "saved")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "saved")
    with torch.no_grad():
        assert torch.allclose(loaded(input_ids=ids).logits, expected, atol=1e-4)
    assert tokenizer.chat_template == policy.tokenizer.chat_template
    assert tokenizer.eos_token == "<|im_end|>"
    assert "lora_" not in "".join(n for n, _ in loaded.named_parameters())
    assert any("lora_" in n for n, _ in policy.model.named_parameters())  # the live policy keeps its adapters


def test_a_stage_output_directory_loads_its_model_subdirectory(tmp_path):
    """`deltabelief sft --out runs/sft` saves to runs/sft/model; `--model runs/sft` must find it."""
    from deltabelief.policy.loading import load_causal_lm

    policy = Policy.from_config(PolicyConfig(model="tiny"), seed=3)
    policy.save(tmp_path / "sft" / "model")
    model, _ = load_causal_lm(str(tmp_path / "sft"))
    for (name, a), b in zip(policy.model.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), name
