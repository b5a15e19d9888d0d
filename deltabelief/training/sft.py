"""Supervised warm start on teacher conversations, with loss only on the questioner's tokens.

Shapes: ``B`` conversations in a micro-batch, ``L`` padded tokens.

A conversation (the ``messages`` column of ``trajectories.parquet``: opening
messages, then alternating assistant moves and user answers) is rendered with
the tokenizer's chat template piece by piece, the same way a rollout builds its
ids (:mod:`deltabelief.policy.chat`): the text before each assistant move
(system, user and the assistant header) gets no loss; the move's content and
the end-of-turn marker that closes it get loss; whatever the template writes
after the marker (a newline) and the user answers get no loss.

The loss is the token mean of −log π(token) over all trained tokens of a batch
(with gradient accumulation over micro-batches giving the same mean).

With ``sft.packing: prefix_tree`` the conversations are sorted by their tokens, a batch is
``batch_size`` neighbours in that order (cut at a random offset each epoch, batches in a
shuffled order), and a batch's conversations share their common prefixes in packed rows
(:mod:`deltabelief.training.prefix_tree`): the same loss, a fraction of the tokens.

On several devices (:mod:`deltabelief.training.sft_distributed`, launched by ``torchrun``) every
rank draws the same batches, trains on its shard of each (:class:`DataParallel`), divides by the
trained tokens of the whole batch (summed over ranks) and sums gradients over ranks: the step
the single process takes on the same batch. Rank 0 alone writes the model and the summary.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Collection, Sequence

import torch
from tqdm.auto import tqdm

from deltabelief.config import Config, OptimConfig, SFTConfig
from deltabelief.policy.chat import ChatTemplateError, encode, pad_id, render
from deltabelief.types import SOLVED_STATUSES
from deltabelief.threads import ThreadFitter
from deltabelief.training.data_parallel import DataParallel
from deltabelief.training.logprobs import right_pad, token_logprobs
from deltabelief.training.optim import build_optimizer
from deltabelief.training.prefix_tree import collate_rows, pack_prefix_trees, tree_nll_sum
from deltabelief.types import Message

log = logging.getLogger(__name__)


@dataclass
class SFTExample:
    input_ids: list[int]
    loss_mask: list[int]
    """1 on the assistant moves and their end-of-turn marker, 0 elsewhere."""
    truncated: bool = False


@dataclass
class SFTResult:
    model_dir: Path | None
    losses: list[float] = field(default_factory=list)
    """Token-mean loss of every optimizer step, in order."""
    num_examples: int = 0
    num_truncated: int = 0
    num_trained_tokens: int = 0


def _after(full: str, prefix: str, where: str) -> str:
    if not full.startswith(prefix):
        raise ChatTemplateError(f"{where}: the chat template is not prefix-stable; cannot locate assistant tokens")
    return full[len(prefix) :]


def build_example(tokenizer, messages: Sequence[Message], max_length: int, where: str = "conversation") -> SFTExample:
    """Token ids and loss mask of one conversation; truncated on the right to ``max_length``.

    The trailing messages after the last assistant move carry no loss and are left out.
    """
    trained = [m.get("trained", True) for m in messages]
    messages = [{k: v for k, v in m.items() if k != "trained"} for m in messages]
    roles = [m.get("role") for m in messages]
    if "assistant" not in roles:
        raise ValueError(f"{where}: no assistant message to learn from (roles {roles})")
    eot = tokenizer.eos_token
    ids: list[int] = []
    mask: list[int] = []
    done_text = ""
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        head = render(tokenizer, messages[:i], add_generation_prompt=True)
        full = render(tokenizer, messages[: i + 1], add_generation_prompt=False)
        context = encode(tokenizer, _after(head, done_text, f"{where}, message {i}"))
        body = _after(full, head, f"{where}, message {i}")
        content = message["content"]
        if not body.startswith(content) or not body[len(content) :].startswith(eot):
            raise ChatTemplateError(
                f"{where}, message {i}: expected the move followed by {eot!r} in the template, got {body[:80]!r}"
            )
        move = encode(tokenizer, content) + encode(tokenizer, eot)  # trained: the move and its end marker
        tail = encode(tokenizer, body[len(content) + len(eot) :])  # e.g. the newline after the marker
        ids += context + move + tail
        mask += [0] * len(context) + [int(trained[i])] * len(move) + [0] * len(tail)
        done_text = full
    truncated = len(ids) > max_length
    return SFTExample(ids[:max_length], mask[:max_length], truncated)


REJECTED_STATUSES = ("repeated", "invalid")
"""Moves the game refused: with ``sft.skip_rejected_moves`` they are context, never targets."""


def untrained_statuses(sft: SFTConfig) -> tuple[str, ...]:
    """Statuses whose moves stay in the context without loss, as ``sft`` asks."""
    return (REJECTED_STATUSES if sft.skip_rejected_moves else ()) + (SOLVED_STATUSES if sft.skip_winning_guess else ())


def load_conversations(path: str | Path, split: str = "train", untrained: Collection[str] = ()) -> list[list[Message]]:
    """The ``messages`` of every row of a trajectories parquet (only ``split`` rows unless empty).

    An assistant move whose status (the ``statuses`` column, when the file has one) is in
    ``untrained`` is marked ``"trained": False``: it stays in the context, without loss.
    """
    from deltabelief.data.files import DataFileError, read_parquet

    frame = read_parquet(path)
    for column in ("messages",) + (("split",) if split else ()):
        if column not in frame.columns:
            raise DataFileError(f"{path}: no '{column}' column (columns: {list(frame.columns)})")
    if split:
        frame = frame[frame["split"] == split]
        if frame.empty:
            raise ValueError(f"{path}: no rows with split == {split!r}")
    marked = bool(untrained) and "statuses" in frame.columns  # conversations from elsewhere may have none
    statuses = frame["statuses"] if marked else [None] * len(frame)
    conversations = []
    for row_id, messages, row_statuses in zip(frame.get("id", frame.index), frame["messages"], statuses):
        items = [{"role": str(m["role"]), "content": str(m["content"])} for m in messages]
        if not items:
            raise ValueError(f"{path}: row {row_id!r} has no messages")
        if row_statuses is not None:
            moves = [m for m in items if m["role"] == "assistant"]
            if len(moves) != len(row_statuses):
                raise ValueError(f"{path}: row {row_id!r} has {len(moves)} moves but {len(row_statuses)} statuses")
            for move, status in zip(moves, row_statuses):
                if status in untrained:
                    move["trained"] = False
        conversations.append(items)
    return conversations


def _micro_batches(examples: list[SFTExample], size: int) -> list[list[SFTExample]]:
    return [examples[i : i + size] for i in range(0, len(examples), size)]


def _trained_tokens(batch: list[SFTExample]) -> int:
    return sum(sum(e.loss_mask) for e in batch)


def _batch_loss(model, batch: list[SFTExample], micro_size: int, pad_id: int, total: float | None = None) -> float:
    """Backward of ``batch``'s share of a token mean over ``total`` trained tokens (default: the
    batch's own), in micro-batches; returns that share of the loss."""
    total = _trained_tokens(batch) if total is None else total
    value = 0.0
    for micro in _micro_batches(batch, micro_size):
        ids, attention = right_pad([e.input_ids for e in micro], pad_id)  # [B, L]
        score, _ = right_pad([e.loss_mask for e in micro], 0)  # [B, L] loss mask
        logprobs = token_logprobs(model, ids, attention, score)  # [B, L] log π(token), 0 off the mask
        loss = -logprobs.sum() / total  # share of the batch token mean
        loss.backward()
        value += float(loss.detach())
    return value


def _tree_batch_loss(model, batch: list[SFTExample], max_row_tokens: int, pad_id: int,
                     total: float | None = None) -> float:
    """As :func:`_batch_loss`, one packed prefix-tree row per forward."""
    total = _trained_tokens(batch) if total is None else total
    dtype = model.get_input_embeddings().weight.dtype
    value = 0.0
    for row in pack_prefix_trees([(e.input_ids, e.loss_mask) for e in batch], max_row_tokens):
        loss = tree_nll_sum(model, collate_rows([row], pad_id, dtype)) / total  # share of the batch token mean
        loss.backward()
        value += float(loss.detach())
    return value


def _epoch_batches(examples: list[SFTExample], sft: SFTConfig, epoch: int) -> list[list[SFTExample]]:
    """This epoch's batches: shuffled conversations, or token-sorted neighbours for prefix trees."""
    generator = torch.Generator().manual_seed(sft.seed * 100_003 + epoch)
    if sft.packing == "none":
        order = torch.randperm(len(examples), generator=generator).tolist()
        return _micro_batches([examples[i] for i in order], sft.batch_size)
    ordered = sorted(examples, key=lambda e: e.input_ids)
    offset = int(torch.randint(sft.batch_size, (1,), generator=generator))  # vary the cuts per epoch
    batches = [ordered[:offset]] if offset else []
    batches += _micro_batches(ordered[offset:], sft.batch_size)
    shuffle = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in shuffle]


def train_sft(
    model,
    tokenizer,
    conversations: Sequence[Sequence[Message]],
    sft: SFTConfig,
    optim: OptimConfig,
    *,
    progress: bool = True,
    log_fn: Callable[[dict, int], None] | None = None,
    num_threads: int = 0,
    adapt_threads: bool = False,
    parallel: DataParallel | None = None,
) -> SFTResult:
    """Fine-tune ``model`` in place on the assistant tokens of ``conversations``.

    With ``parallel`` (several ranks), every rank passes the same conversations and a model on
    its own device; ``log_fn`` and the progress bar act on rank 0 only.
    """
    parallel = parallel or DataParallel()
    examples = [build_example(tokenizer, c, sft.max_length, f"conversation {i}") for i, c in enumerate(conversations)]
    examples = [e for e in examples if sum(e.loss_mask) > 0]
    if not examples:
        raise ValueError("no conversation has trainable tokens within sft.max_length")
    num_truncated = sum(e.truncated for e in examples)
    if num_truncated:
        log.warning("%d of %d conversations truncated to sft.max_length=%d", num_truncated, len(examples), sft.max_length)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(params, optim, lr=sft.lr)
    pad = pad_id(tokenizer)
    micro = sft.micro_batch_size or sft.batch_size
    epochs = [_epoch_batches(examples, sft, epoch) for epoch in range(sft.epochs)]
    num_trained = _trained_tokens(examples)
    parallel.require_same("the number of SFT examples", len(examples))  # else ranks draw different batches
    parallel.require_same("the number of trained tokens", num_trained)
    parallel.broadcast_parameters(model)
    result = SFTResult(None, num_examples=len(examples), num_truncated=num_truncated, num_trained_tokens=num_trained)
    model.train()
    threads = ThreadFitter(num_threads, adapt=adapt_threads)
    bar = tqdm(total=sum(len(batches) for batches in epochs), desc="sft", disable=not (progress and parallel.is_main))
    for epoch, batches in enumerate(epochs):
        for batch in batches:
            threads.fit()
            started = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            shard = parallel.shard(batch)
            # ranks hold different numbers of trained tokens: divide by the whole batch's count
            (total,) = parallel.sum([_trained_tokens(shard)])
            if sft.packing == "prefix_tree":
                loss = _tree_batch_loss(model, shard, sft.max_row_tokens, pad, total)
            else:
                loss = _batch_loss(model, shard, micro, pad, total)
            parallel.sum_gradients(params)
            (loss,) = parallel.sum([loss])
            grad_norm = torch.nn.utils.clip_grad_norm_(params, optim.grad_clip)
            optimizer.step()
            result.losses.append(loss)
            step = len(result.losses)
            if log_fn is not None and parallel.is_main:
                log_fn({"loss/sft": loss, "loss/grad_norm": float(grad_norm), "perf/seconds_step":
                        time.perf_counter() - started, "sft/epoch": float(epoch)}, step)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}")
    bar.close()
    model.eval()
    return result


def warm_start(config: Config, trajectories: str | Path, out_dir: str | Path, *, progress: bool = True,
               log_fn: Callable[[dict, int], None] | None = None, parallel: DataParallel | None = None) -> Path:
    """Load ``config.policy``, fine-tune it on the teacher conversations, save to ``out_dir/model``.

    With ``sft.enabled: false`` the starting model is saved unchanged. Returns the model directory.
    With ``parallel``, the model goes on the rank's device and rank 0 alone writes ``out_dir``.
    """
    from deltabelief.policy.policy import Policy

    out_dir = Path(out_dir)
    torch.manual_seed(config.sft.seed)
    policy = Policy.from_config(config.policy, seed=config.sft.seed, device=parallel.device if parallel else None)
    parallel = parallel or DataParallel()
    result = SFTResult(None)
    if config.sft.enabled:
        conversations = load_conversations(trajectories, config.sft.split, untrained_statuses(config.sft))
        result = train_sft(policy.model, policy.tokenizer, conversations, config.sft, config.optim,
                           progress=progress, log_fn=log_fn, num_threads=config.policy.num_threads,
                           adapt_threads=config.policy.adapt_threads, parallel=parallel)
    else:
        log.info("sft.enabled is false: saving %s unchanged", config.policy.model)
    if not parallel.is_main:
        return out_dir / "model"
    out_dir.mkdir(parents=True, exist_ok=True)
    result.model_dir = policy.save(out_dir / "model")
    summary = {k: v for k, v in vars(result).items() if k != "model_dir"} | {"model_dir": str(result.model_dir)}
    (out_dir / "sft_result.json").write_text(json.dumps(summary, indent=1))
    return result.model_dir
