"""The local judge: a transformers model in-process (the tiny random model, and a scripted stand-in)."""

import pytest
import torch

from deltabelief.config import JudgeConfig
from deltabelief.judges.base import get_judge
from deltabelief.judges.local import LocalJudge, generate_chat, make_local_judge
from deltabelief.policy.loading import tiny_causal_lm
from deltabelief.types import JudgeRequest, Target

TQ = ("yes", "no", "invalid", "finished", "unanswerable")


@pytest.fixture(scope="module")
def tiny():
    return tiny_causal_lm(seed=0)


def _request(move: str, history=()) -> JudgeRequest:
    return JudgeRequest(
        task="twenty_questions",
        target=Target("t1", "twenty_questions", "cat"),
        move=move,
        history=history,
        instructions="You answer yes/no questions about the secret 'cat'.",
        labels=TQ,
    )


REQUESTS = [
    _request("Is it alive?"),
    _request("Is it bigger than a bread box?", history=(("Is it alive?", "Yes."),)),
    _request("Does it have fur?", history=(("Is it alive?", "Yes."), ("Is it big?", "No."))),
]


def _config(**changes) -> JudgeConfig:
    return JudgeConfig(backend="local", model="tiny", **{"temperature": 0.7, "max_tokens": 6, "batch_size": 2, **changes})


def test_one_reply_per_request_and_unparseable_counted(tiny):
    model, tokenizer = tiny
    judge = make_local_judge(_config(), model=model, tokenizer=tokenizer)
    replies = judge.answer_batch(REQUESTS)
    assert len(replies) == 3
    # A random model does not write <answer> tags: every reply is invalid and counted.
    assert [r.label for r in replies] == ["invalid"] * 3
    assert not any(r.parsed for r in replies)
    assert all(r.raw for r in replies)
    assert judge.stats == {"calls": 3, "unparseable": 3, "batches": 1}
    judge.answer_batch(REQUESTS[:1])
    assert judge.stats == {"calls": 4, "unparseable": 4, "batches": 2}
    assert judge.answer_batch([]) == []


def test_same_seed_same_output(tiny):
    model, tokenizer = tiny
    raws = []
    for _ in range(2):
        judge = make_local_judge(_config(seed=3), model=model, tokenizer=tokenizer)
        raws.append([r.raw for r in judge.answer_batch(REQUESTS)])
    assert raws[0] == raws[1]
    other = make_local_judge(_config(seed=4), model=model, tokenizer=tokenizer)
    assert [r.raw for r in other.answer_batch(REQUESTS)] != raws[0]


def test_sampling_does_not_disturb_the_global_rng(tiny):
    model, tokenizer = tiny
    torch.manual_seed(11)
    expected = torch.rand(3)
    torch.manual_seed(11)
    make_local_judge(_config(), model=model, tokenizer=tokenizer).answer_batch(REQUESTS[:1])
    assert torch.equal(torch.rand(3), expected)


def test_greedy_batched_equals_one_at_a_time(tiny):
    """Left padding must not change what the model writes (temperature 0 = greedy)."""
    model, tokenizer = tiny
    chats = [[{"role": "user", "content": text}] for text in ("Hi", "Tell me a long story about a cat and a dog.")]
    batched = generate_chat(model, tokenizer, chats, temperature=0.0, max_tokens=5, batch_size=2)
    alone = [generate_chat(model, tokenizer, [c], temperature=0.0, max_tokens=5)[0] for c in chats]
    assert [c.text for c in batched] == [c.text for c in alone]
    assert [c.prompt_tokens for c in batched] == [c.prompt_tokens for c in alone]


class ScriptedModel:
    """Stands in for a causal LM: appends fixed token ids to every prompt row."""

    device = torch.device("cpu")

    def __init__(self, new_ids: list[list[int]]):
        self.new_ids = new_ids
        self.seen_masks = []

    def generate(self, input_ids, attention_mask, max_new_tokens, pad_token_id, eos_token_id, **sampling):
        self.seen_masks.append(attention_mask.clone())
        rows = [ids[:max_new_tokens] + [pad_token_id] * (max_new_tokens - len(ids[:max_new_tokens])) for ids in self.new_ids]
        return torch.cat([input_ids, torch.tensor(rows[: len(input_ids)])], dim=1)


def test_replies_are_decoded_up_to_end_of_turn(tiny):
    _, tokenizer = tiny
    eos = tokenizer.eos_token_id
    yes = tokenizer.encode("<answer>Yes</answer>", add_special_tokens=False)
    no = tokenizer.encode("It is not. <answer>No</answer>", add_special_tokens=False)
    # Row 1 ends its turn, then the model writes junk that must be cut off; row 2 runs out of tokens.
    model = ScriptedModel([yes + [eos] + tokenizer.encode(" junk", add_special_tokens=False), no])
    judge = make_local_judge(_config(max_tokens=len(no)), model=model, tokenizer=tokenizer)
    first, second = judge.answer_batch(REQUESTS[:2])
    assert (first.label, first.parsed, first.raw) == ("yes", True, "<answer>Yes</answer>")
    assert first.details == {"finish_reason": "stop"}
    assert (second.label, second.raw) == ("no", "It is not. <answer>No</answer>")
    assert second.details == {"finish_reason": "length"}
    assert judge.stats == {"calls": 2, "unparseable": 0, "batches": 1}
    # Left padding: the shorter prompt (first request, no history) is padded on the left.
    (mask,) = model.seen_masks
    assert mask[0, 0].item() == 0 and mask[0, -1].item() == 1 and mask[1].all()


def test_factory_and_registry(tiny):
    model, tokenizer = tiny
    judge = get_judge("local", config=_config(), model=model, tokenizer=tokenizer)
    assert isinstance(judge, LocalJudge) and judge.name == "local"
    assert "tiny" in repr(judge)
    with pytest.raises(ValueError, match="both model and tokenizer"):
        make_local_judge(_config(), model=model)
    # Loading by spec works too ('tiny' builds the random model).
    assert make_local_judge(_config()).answer_batch(REQUESTS[:1])[0].label == "invalid"


def test_bad_generation_settings_are_refused(tiny):
    model, tokenizer = tiny
    chat = [[{"role": "user", "content": "Hi"}]]
    with pytest.raises(ValueError, match="temperature"):
        generate_chat(model, tokenizer, chat, temperature=-1.0, max_tokens=4)
    with pytest.raises(ValueError, match="max_tokens"):
        generate_chat(model, tokenizer, chat, temperature=0.0, max_tokens=0)
