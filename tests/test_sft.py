"""SFT warm start: only the questioner's tokens carry loss, the loss is exact, and training learns them."""

import pandas as pd
import pytest
import torch

from deltabelief.config import OptimConfig, SFTConfig, load_config
from deltabelief.policy.loading import load_causal_lm, tiny_causal_lm
from deltabelief.training.sft import build_example, load_conversations, train_sft, untrained_statuses, warm_start

CONVERSATION = [
    {"role": "system", "content": "You ask yes/no questions."},
    {"role": "user", "content": "Ask your first question."},
    {"role": "assistant", "content": "Is it alive?"},
    {"role": "user", "content": "No."},
    {"role": "assistant", "content": "Is it a car?"},
    {"role": "user", "content": "Yes! You found it."},
]


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_causal_lm(0)[1]


def test_mask_covers_exactly_the_moves_and_their_end_marker(tokenizer):
    example = build_example(tokenizer, CONVERSATION, max_length=4096)
    whole = tokenizer.apply_chat_template(CONVERSATION[:5], tokenize=False)  # up to the last move
    assert example.input_ids == tokenizer(whole, add_special_tokens=False)["input_ids"]  # same ids as one render
    trained = [i for i, m in zip(example.input_ids, example.loss_mask) if m]
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    expected = (tokenizer("Is it alive?", add_special_tokens=False)["input_ids"] + [end]
                + tokenizer("Is it a car?", add_special_tokens=False)["input_ids"] + [end])
    assert trained == expected
    # the newline after each <|im_end|>, headers, system and user text are never trained
    text = tokenizer.decode([i for i, m in zip(example.input_ids, example.loss_mask) if not m])
    assert "No." in text and "system" in text and "assistant" in text and "alive" not in text


def test_truncation_and_missing_assistant(tokenizer):
    short = build_example(tokenizer, CONVERSATION, max_length=20)
    assert short.truncated and len(short.input_ids) == 20 and len(short.loss_mask) == 20
    with pytest.raises(ValueError, match="no assistant message"):
        build_example(tokenizer, CONVERSATION[:2], max_length=100, where="row 7")


def test_one_step_loss_is_the_token_mean_cross_entropy_of_the_moves(tokenizer):
    model, _ = tiny_causal_lm(3)
    example = build_example(tokenizer, CONVERSATION, max_length=4096)
    ids = torch.tensor([example.input_ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)  # [L-1, V]
    picked = logp.gather(-1, ids[0, 1:, None])[:, 0]  # log π(token j+1 | ≤ j)
    mask = torch.tensor(example.loss_mask[1:], dtype=torch.bool)
    expected = float(-picked[mask].mean())
    sft = SFTConfig(epochs=1, lr=1e-3, batch_size=1)
    result = train_sft(model, tokenizer, [CONVERSATION], sft, OptimConfig(), progress=False)
    assert result.losses[0] == pytest.approx(expected, rel=1e-4)
    assert result.num_trained_tokens == sum(example.loss_mask)


def test_gradient_accumulation_matches_the_whole_batch(tokenizer):
    other = CONVERSATION[:2] + [{"role": "assistant", "content": "Is it bigger than a breadbox?"},
                                {"role": "user", "content": "Yes."}]
    losses = []
    for micro in (0, 1):
        model, _ = tiny_causal_lm(5)
        sft = SFTConfig(epochs=2, lr=1e-3, batch_size=2, micro_batch_size=micro, seed=1)
        losses.append(train_sft(model, tokenizer, [CONVERSATION, other], sft, OptimConfig(), progress=False).losses)
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)


def test_sft_learns_the_moves(tokenizer):
    model, _ = tiny_causal_lm(1)
    sft = SFTConfig(epochs=30, lr=3e-3, batch_size=1)
    result = train_sft(model, tokenizer, [CONVERSATION], sft, OptimConfig(), progress=False)
    assert result.losses[-1] < 0.2 * result.losses[0]


def test_warm_start_reads_the_train_split_and_saves_a_loadable_model(tmp_path, tokenizer):
    frame = pd.DataFrame({"id": ["a", "b"], "split": ["train", "val"],
                          "messages": [CONVERSATION, CONVERSATION[:4]]})
    path = tmp_path / "trajectories.parquet"
    frame.to_parquet(path)
    assert len(load_conversations(path, "train")) == 1 and len(load_conversations(path, "")) == 2
    with pytest.raises(ValueError, match="split == 'test'"):
        load_conversations(path, "test")
    config = load_config("tiny", ["sft.epochs=2", "sft.batch_size=1"])
    model_dir = warm_start(config, path, tmp_path / "sft", progress=False)
    reloaded, reloaded_tokenizer = load_causal_lm(str(model_dir))
    assert reloaded_tokenizer.eos_token == "<|im_end|>"
    assert (tmp_path / "sft" / "sft_result.json").exists()
    untouched, _ = tiny_causal_lm(config.sft.seed)
    changed = [not torch.equal(a, b) for a, b in zip(reloaded.parameters(), untouched.parameters())]
    assert any(changed)


def _branch(last_answer: str, guess: str) -> list[dict]:
    """CONVERSATION with its last exchange replaced: conversations that share all but the end."""
    return CONVERSATION[:3] + [{"role": "user", "content": last_answer},
                               {"role": "assistant", "content": guess},
                               {"role": "user", "content": "Yes! You found it."}]


def test_prefix_tree_rows_hold_each_shared_prefix_once_with_counted_weights(tokenizer):
    from deltabelief.training.prefix_tree import pack_prefix_trees

    a = build_example(tokenizer, _branch("No.", "Is it a car?"), 4096)
    b = build_example(tokenizer, _branch("No.", "Is it a boat?"), 4096)
    shared = next(j for j, (x, y) in enumerate(zip(a.input_ids, b.input_ids)) if x != y)
    (row,) = pack_prefix_trees([(a.input_ids, a.loss_mask), (b.input_ids, b.loss_mask)] * 2, max_tokens=4096)
    assert len(row) == len(a.input_ids) + len(b.input_ids) - shared  # the common prefix is stored once
    assert row.num_sequences == 4
    assert sum(row.weight) == 2 * (sum(a.loss_mask) + sum(b.loss_mask))  # every trained token, counted
    assert row.depth[:shared] == list(range(shared))
    assert row.depth[len(a.input_ids)] == shared  # b's first own token continues at its depth
    rows = pack_prefix_trees([(a.input_ids, a.loss_mask), (b.input_ids, b.loss_mask)], max_tokens=len(a.input_ids))
    assert [r.num_sequences for r in rows] == [1, 1]  # b does not fit beside a: a row of its own


def test_prefix_tree_batches_give_the_same_loss_and_gradients_as_padded_batches(tokenizer):
    from deltabelief.training.sft import _batch_loss, _tree_batch_loss

    conversations = [_branch("No.", "Is it a car?"), _branch("No.", "Is it a boat?"),
                     _branch("Yes.", "Is it a cat?"), CONVERSATION]
    batch = [build_example(tokenizer, c, 4096) for c in conversations]
    grads, losses = [], []
    for packed in (False, True):
        model, _ = tiny_causal_lm(5)
        model.zero_grad()
        loss = _tree_batch_loss(model, batch, 4096, 0) if packed else _batch_loss(model, batch, 2, 0)
        losses.append(loss)
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    assert torch.allclose(grads[1], grads[0], atol=1e-6, rtol=1e-4)


def test_prefix_tree_sft_learns_the_moves(tokenizer):
    model, _ = tiny_causal_lm(1)
    sft = SFTConfig(epochs=30, lr=3e-3, batch_size=2, packing="prefix_tree")
    result = train_sft(model, tokenizer, [_branch("No.", "Is it a car?"), _branch("Yes.", "Is it a cat?")],
                       sft, OptimConfig(), progress=False)
    assert result.losses[-1] < 0.3 * result.losses[0]


def test_a_rejected_move_stays_in_the_context_without_loss(tmp_path, tokenizer):
    repeated = CONVERSATION[:4] + [{"role": "assistant", "content": "Is it alive?"},
                                   {"role": "user", "content": "You have asked that already."}] + CONVERSATION[4:]
    frame = pd.DataFrame({"id": ["a"], "split": ["train"], "messages": [repeated],
                          "statuses": [["no", "repeated", "finished"]]})
    path = tmp_path / "trajectories.parquet"
    frame.to_parquet(path)
    (marked,) = load_conversations(path, "train", untrained_statuses(SFTConfig()))
    assert [m.get("trained", True) for m in marked if m["role"] == "assistant"] == [True, False, True]
    example = build_example(tokenizer, marked, 4096)
    plain = build_example(tokenizer, repeated, 4096)
    assert example.input_ids == plain.input_ids  # the repeat is still in the context ...
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    move = tokenizer("Is it alive?", add_special_tokens=False)["input_ids"] + [end]
    assert sum(plain.loss_mask) - sum(example.loss_mask) == len(move)  # ... but only once a target
    (unmarked,) = load_conversations(path, "train", untrained_statuses(SFTConfig(skip_rejected_moves=False)))
    assert all("trained" not in m for m in unmarked)
    (unsolved,) = load_conversations(path, "train", untrained_statuses(SFTConfig(skip_winning_guess=True)))
    assert [m.get("trained", True) for m in unsolved if m["role"] == "assistant"] == [True, False, False]
