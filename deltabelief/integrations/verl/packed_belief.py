"""Beliefs at the cost of one forward pass on verl: one packed row per rollout.

The per-prefix layout (:mod:`.belief`) sends one elicitation row per (rollout, turn) and
re-encodes every history prefix: Σ_t (e_t + S) tokens per rollout, ~12× the rollout at 20 turns.
Here each rollout becomes ONE row, laid out by :func:`deltabelief.belief.pack_prefixes` (the
single-machine scorer's layout): ``h_N | suffix_0 | … | suffix_N``, suffix_t attending to h_t and
causally to itself through a 4-D mask, positions continuing from e_t: e_N + (N+1)·S tokens.

Data flow (the trainer hook in :mod:`.runner` drives it):

1. :func:`packed_payload` (driver) puts every scored rollout's h_N, its ends e_0..e_N (h_N
   coordinates) and its elicitation into a DataProto, one row per rollout;
2. the actor worker group's ``compute_packed_beliefs`` (:mod:`.belief_worker`) splits it over the
   data-parallel ranks like ``compute_log_prob``; each rank runs :func:`score_payload` on the
   actor's module and returns log b_0..log b_N per row;
3. :func:`score_beliefs_packed` (driver) puts them back into [B, T+1].

Shape notation: B rollouts, b the rows one rank scores, W = T+1 (the most turns of any rollout,
plus one), L packed tokens of a micro-batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal

import numpy as np
import torch
from verl.protocol import DataProto

from deltabelief.belief import packed_length, per_prefix_length, pack_prefixes, score_packed_rows
from deltabelief.integrations.verl.belief import history, recorded_turn_ends, rollout_elicitations
from deltabelief.policy.chat import pad_id

HISTORY_KEY = "db_packed_history"
"""non-tensor [B] int64 arrays: h_N = the prompt and the response up to the last turn's end."""
ENDS_KEY = "db_packed_ends"
"""non-tensor [B] lists: e_0..e_N in h_N coordinates (e_0 = the prompt's length)."""
ELICITATION_KEY = "db_packed_elicitation"
"""non-tensor [B] :class:`~deltabelief.belief.Elicitation` of the rollout's target."""
ROW_KEY = "db_row"
"""[B] long: the rollout's row in the step's batch (survives chunking, padding and concat)."""
LOG_BELIEFS_KEY = "db_log_beliefs"
"""[B, W] float32 returned by the workers; column t is log b_t."""
MASK_KEY = "db_log_beliefs_mask"
"""[B, W] bool returned by the workers; True for t = 0..N of the row."""
FORWARD_TOKENS_KEY = "db_forward_tokens"
"""[B] long returned by the workers: the padded width of the micro-batch that scored the row."""


def _objects(items: list) -> np.ndarray:
    """A 1-D object array (np.array would make a 2-D array of equal-length lists)."""
    out = np.empty(len(items), dtype=object)
    for i, item in enumerate(items):
        out[i] = item
    return out


@dataclass
class PackedPlan:
    """What the packed pass scores and what it reads back."""

    payload: DataProto | None
    """One row per scored rollout (None when every rollout is excluded)."""
    shape: tuple[int, int]
    """(B, T+1) of the log-belief table."""
    excluded: list[int] = field(default_factory=list)
    """Rollout rows not scored because their target cannot be located."""


def packed_payload(batch: DataProto, tokenizer, template: str, *, micro_batch_size: int,
                   on_unlocatable: Literal["raise", "exclude"] = "raise") -> PackedPlan:
    """One payload row per rollout whose target can be located; see the module docstring."""
    if micro_batch_size < 1:
        raise ValueError(f"micro_batch_size must be >= 1, got {micro_batch_size}")
    elicitations = rollout_elicitations(batch, tokenizer, template, on_unlocatable)
    rows, histories, ends_list, chosen, excluded = [], [], [], [], []
    width = 1
    for row, elicitation in enumerate(elicitations):
        prompt, response = history(batch, row)
        ends = recorded_turn_ends(batch, row, len(response))  # response coordinates, e_0 = 0
        width = max(width, len(ends))
        if elicitation is None:
            excluded.append(row)
            continue
        rows.append(row)
        histories.append(np.asarray(prompt + response[: ends[-1]], dtype=np.int64))  # h_N
        ends_list.append([len(prompt) + end for end in ends])
        chosen.append(elicitation)
    if not rows:
        return PackedPlan(None, (len(elicitations), width), excluded)
    pad = pad_id(tokenizer)
    payload = DataProto.from_dict(
        tensors={ROW_KEY: torch.tensor(rows, dtype=torch.long)},
        non_tensors={HISTORY_KEY: _objects(histories), ENDS_KEY: _objects(ends_list),
                     ELICITATION_KEY: _objects(chosen)},
        meta_info={"belief_width": width, "pad_id": pad, "micro_batch_size": micro_batch_size},
    )
    return PackedPlan(payload, (len(elicitations), width), excluded)


def score_payload(model, data: DataProto, mask_dtype: torch.dtype | None = None) -> DataProto:
    """log b_0..log b_N of every payload row with ``model`` (a causal LM taking a 4-D mask).

    The caller puts the model in eval mode without gradients, with an attention implementation
    that honours a 4-D mask (sdpa or eager). Rows are scored longest first in micro-batches of
    ``meta_info["micro_batch_size"]``, so every data-parallel rank holding the same number of rows
    runs the same number of forwards (FSDP's all-gathers need that). Returns ``ROW_KEY``,
    ``LOG_BELIEFS_KEY`` [b, W], ``MASK_KEY`` [b, W] and ``FORWARD_TOKENS_KEY`` [b].
    """
    width, pad_id, micro = (data.meta_info[k] for k in ("belief_width", "pad_id", "micro_batch_size"))
    packs = [pack_prefixes(h.tolist(), e, el) for h, e, el in zip(data.non_tensor_batch[HISTORY_KEY],
                                                                 data.non_tensor_batch[ENDS_KEY],
                                                                 data.non_tensor_batch[ELICITATION_KEY])]
    log_beliefs = torch.zeros((len(packs), width), dtype=torch.float32)  # [b, W]
    mask = torch.zeros((len(packs), width), dtype=torch.bool)  # [b, W]
    forward_tokens = torch.zeros(len(packs), dtype=torch.long)  # [b]
    order = sorted(range(len(packs)), key=lambda i: len(packs[i].ids), reverse=True)  # little padding
    for first in range(0, len(order), micro):
        chunk = order[first : first + micro]
        values = score_packed_rows(model, [packs[i] for i in chunk], pad_id, mask_dtype)  # [N_i+1] each
        padded = max(len(packs[i].ids) for i in chunk)
        for i, value in zip(chunk, values):
            log_beliefs[i, : len(value)] = value
            mask[i, : len(value)] = True
            forward_tokens[i] = padded
    return DataProto.from_dict(tensors={ROW_KEY: data.batch[ROW_KEY].clone(), LOG_BELIEFS_KEY: log_beliefs,
                                        MASK_KEY: mask, FORWARD_TOKENS_KEY: forward_tokens})


@dataclass
class PackedBeliefs:
    log_beliefs: torch.Tensor
    """[B, T+1] float32, column t is log b_t; 0 where ``mask`` is False."""
    mask: torch.Tensor
    """[B, T+1] bool; rows of excluded rollouts are all False."""
    forward_tokens: int
    """Tokens the workers' forwards processed, padding included."""


def score_beliefs_packed(
    batch: DataProto, tokenizer, template: str, compute_packed_beliefs: Callable[[DataProto], DataProto], *,
    micro_batch_size: int, on_unlocatable: Literal["raise", "exclude"] = "raise",
) -> PackedBeliefs:
    """log b_0..log b_N for every rollout of ``batch``, one packed row per rollout.

    Args:
        batch: the rollout batch (``prompts``, ``responses``, ``attention_mask``; non-tensor
            ``db_turn_ends`` and ``db_target``).
        compute_packed_beliefs: a payload (:func:`packed_payload`) -> :func:`score_payload`'s
            output for its rows, in any order (on the cluster: the actor worker group).
        micro_batch_size: rows per forward on a worker (each costs an L×L mask).
    """
    plan = packed_payload(batch, tokenizer, template, micro_batch_size=micro_batch_size,
                          on_unlocatable=on_unlocatable)
    table = torch.zeros(plan.shape, dtype=torch.float32)  # [B, T+1]
    mask = torch.zeros(plan.shape, dtype=torch.bool)  # [B, T+1]
    if plan.payload is None:
        return PackedBeliefs(table, mask, 0)
    out = compute_packed_beliefs(plan.payload)
    rows = out.batch[ROW_KEY].long()  # [B'] rollout rows, maybe reordered
    if sorted(rows.tolist()) != plan.payload.batch[ROW_KEY].tolist():
        raise ValueError(f"the workers returned rows {sorted(rows.tolist())[:8]}…, expected the payload's "
                         f"{plan.payload.batch[ROW_KEY].tolist()[:8]}…")
    table[rows] = out.batch[LOG_BELIEFS_KEY].float().cpu()
    mask[rows] = out.batch[MASK_KEY].bool().cpu()
    return PackedBeliefs(table, mask, int(out.batch[FORWARD_TOKENS_KEY].sum()))


def layout_tokens(batch: DataProto, tokenizer, template: str) -> dict[str, int]:
    """Tokens each layout feeds the model for ``batch`` (no padding) and the rollouts' own tokens.

    ``packed``: e_N + (N+1)·S per rollout; ``per_prefix``: Σ_t (e_t + S); ``trajectory``: prompt +
    response. Unlocatable targets count as not scored.
    """
    elicitations = rollout_elicitations(batch, tokenizer, template, "exclude")
    counts = {"trajectory": 0, "packed": 0, "per_prefix": 0}
    for row, elicitation in enumerate(elicitations):
        prompt, response = history(batch, row)
        counts["trajectory"] += len(prompt) + len(response)
        if elicitation is None:
            continue
        ends = [len(prompt) + end for end in recorded_turn_ends(batch, row, len(response))]
        counts["packed"] += packed_length(ends, len(elicitation.ids))
        counts["per_prefix"] += per_prefix_length(ends, len(elicitation.ids))
    return counts
