"""Belief scoring on the cluster: log b_t from the actor's own log-probabilities.

As in the reference and in :mod:`deltabelief.belief`: after turn t the history h_t is the
conversation up to the next assistant header; appending the elicitation (``belief.template``,
``Is it '{target}'?``) as the assistant's message, log b_t = Σ_k log π(y_k | h_t, prefix, y_<k)
under the current policy at temperature 1, with no length normalisation.

Data flow on verl (the trainer hook in :mod:`.runner` drives it):

1. the agent loop records where every h_t ends (``db_turn_ends``, response coordinates, e_0 = 0)
   and the target (``db_target``);
2. :func:`plan_elicitations` lists every (rollout i, turn t) and :func:`elicitation_rows` builds a
   chunk of them in verl's own layout:
   ``prompts`` = h_t (left-padded), ``responses`` = the elicitation ids (right-padded),
   ``response_mask`` = 1 on the target's tokens;
3. the trainer runs the actor worker group's ``compute_log_prob`` on it (FSDP, GPU), which returns
   log π of every response token given everything before it;
4. :func:`target_log_probs` sums the target tokens' log-probabilities and :func:`belief_table`
   puts them back into [B, T+1].

Steps 1, 2 and 4 are plain tensor code tested on CPU; step 3 needs the GPU workers (the tests run
it through verl's padding conversions with a small CPU model standing in for the FSDP worker).

Shape notation: B rollouts, T turns (the most of any rollout), M elicitation rows (Σ_i N_i+1),
P prompt width, R response width.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Literal, Sequence

import torch
from verl.protocol import DataProto
from verl.utils.model import compute_position_id_with_mask

from deltabelief.belief import Elicitation, UnlocatableTargetError, build_elicitation
from deltabelief.policy.chat import pad_id

log = logging.getLogger(__name__)

TURN_ENDS_KEY = "db_turn_ends"
TARGET_KEY = "db_target"


def _left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # [M, P]
    mask = torch.zeros((len(rows), width), dtype=torch.long)  # [M, P]
    for i, row in enumerate(rows):
        if row:
            ids[i, width - len(row):] = torch.tensor(row)
            mask[i, width - len(row):] = 1
    return ids, mask


def _right_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # [M, R]
    mask = torch.zeros((len(rows), width), dtype=torch.long)  # [M, R]
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return ids, mask


def history(batch: DataProto, row: int) -> tuple[list[int], list[int]]:
    """Rollout ``row``'s unpadded prompt ids and response ids."""
    prompts, responses = batch.batch["prompts"][row], batch.batch["responses"][row]  # [P], [R]
    attention = batch.batch["attention_mask"][row]  # [P + R]
    width = prompts.shape[0]
    prompt = prompts[attention[:width].bool()].tolist()
    response = responses[attention[width:].bool()].tolist()
    return prompt, response


def recorded_turn_ends(batch: DataProto, row: int, response_length: int) -> list[int]:
    """[e_0 … e_N] of rollout ``row`` in response coordinates, checked increasing and in range."""
    ends = [int(e) for e in batch.non_tensor_batch[TURN_ENDS_KEY][row]]
    if not ends or ends[0] != 0:
        raise ValueError(f"row {row}: {TURN_ENDS_KEY} must start with e_0 = 0, got {ends[:3]}")
    if any(b <= a for a, b in zip(ends, ends[1:])):
        raise ValueError(f"row {row}: {TURN_ENDS_KEY} {ends} is not strictly increasing")
    if ends[-1] > response_length:
        raise ValueError(f"row {row}: h_N ends at {ends[-1]} beyond the {response_length} response tokens")
    return ends


@dataclass
class ElicitationPlan:
    """Which elicitation rows to score: one per (rollout i, t = 0..N_i)."""

    rollout: torch.Tensor
    """[M] long, the rollout row of each elicitation row."""
    turn: torch.Tensor
    """[M] long, t of each row (0 = before any question)."""
    end: torch.Tensor
    """[M] long, e_t: h_t is the rollout's prompt plus its first e_t response tokens."""
    elicitations: list[Elicitation | None]
    """[B] the elicitation of each rollout's target (None when excluded)."""
    shape: tuple[int, int]
    """(B, T+1) of the log-belief table."""
    excluded: list[int] = field(default_factory=list)
    """Rollout rows not scored because their target cannot be located (``on_unlocatable='exclude'``)."""

    def __len__(self) -> int:
        return len(self.rollout)


def rollout_elicitations(batch: DataProto, tokenizer, template: str, on_unlocatable: str) -> list[Elicitation | None]:
    """[B] the elicitation of each rollout's target (None when unlocatable and excluded); built once per target."""
    if on_unlocatable not in ("raise", "exclude"):
        raise ValueError(f"on_unlocatable must be 'raise' or 'exclude', got {on_unlocatable!r}")
    cache: dict[str, Elicitation | None] = {}
    out = []
    for target in batch.non_tensor_batch[TARGET_KEY]:
        target = str(target)
        if target not in cache:
            try:
                cache[target] = build_elicitation(tokenizer, template, target)
            except UnlocatableTargetError:
                if on_unlocatable == "raise":
                    raise
                cache[target] = None
        out.append(cache[target])
    return out


def plan_elicitations(
    batch: DataProto, tokenizer, template: str, *, on_unlocatable: Literal["raise", "exclude"] = "raise",
) -> ElicitationPlan:
    """The (rollout, t, e_t) of every elicitation row, checked against each rollout's response."""
    elicitations = rollout_elicitations(batch, tokenizer, template, on_unlocatable)
    rollout, turn, end, excluded = [], [], [], []
    width = 1
    for row, elicitation in enumerate(elicitations):
        _, response = history(batch, row)
        ends = recorded_turn_ends(batch, row, len(response))
        width = max(width, len(ends))
        if elicitation is None:
            excluded.append(row)
            continue
        rollout += [row] * len(ends)
        turn += range(len(ends))
        end += ends
    if excluded:
        log.warning("belief scoring excluded %d rollouts whose target cannot be located", len(excluded))
    as_long = lambda values: torch.tensor(values, dtype=torch.long)  # noqa: E731
    return ElicitationPlan(as_long(rollout), as_long(turn), as_long(end), elicitations,
                           (len(elicitations), width), excluded)


def elicitation_rows(batch: DataProto, plan: ElicitationPlan, indices: Sequence[int], pad_id: int) -> DataProto:
    """Plan rows ``indices`` in verl's layout: h_t as the prompt, prefix + y as the response."""
    prompts, responses, targets = [], [], []
    cached: dict[int, tuple[list[int], list[int]]] = {}
    for index in indices:
        row, end = int(plan.rollout[index]), int(plan.end[index])
        if row not in cached:
            cached[row] = history(batch, row)
        prompt, response = cached[row]
        elicitation = plan.elicitations[row]
        prompts.append(prompt + response[:end])  # h_t
        responses.append(elicitation.ids)  # elicitation prefix + y
        targets.append([0] * len(elicitation.prefix_ids) + [1] * len(elicitation.target_ids))
    return elicitation_data(prompts, responses, targets, pad_id)


def elicitation_data(prompts: list[list[int]], responses: list[list[int]], targets: list[list[int]],
                     pad_id: int) -> DataProto:
    """verl's padded layout: prompts left-padded [M, P], responses right-padded [M, R].

    ``response_mask`` marks the target's tokens; ``meta_info`` asks for temperature 1.
    """
    prompt_ids, prompt_mask = _left_pad(prompts, pad_id)  # [M, P]
    response_ids, response_att = _right_pad(responses, pad_id)  # [M, R]
    target_mask, _ = _right_pad(targets, 0)  # [M, R] 1 on y's tokens
    attention_mask = torch.cat([prompt_mask, response_att], dim=1)  # [M, P + R]
    return DataProto.from_dict(
        tensors={
            "prompts": prompt_ids,
            "responses": response_ids,
            "input_ids": torch.cat([prompt_ids, response_ids], dim=1),  # [M, P + R]
            "attention_mask": attention_mask,
            "position_ids": compute_position_id_with_mask(attention_mask),  # [M, P + R]
            "response_mask": target_mask,
        },
        meta_info={"temperature": 1.0, "global_token_num": attention_mask.sum(dim=1).tolist()},
    )


def target_log_probs(log_probs: torch.Tensor, rows: DataProto) -> torch.Tensor:
    """[M] Σ_k log π(y_k | h_t, prefix, y_<k) from [M, R] response log-probs (no length normalisation)."""
    target_mask = rows.batch["response_mask"]  # [M, R]
    if log_probs.shape != target_mask.shape:
        raise ValueError(f"log-probs {tuple(log_probs.shape)} do not match the rows' responses "
                         f"{tuple(target_mask.shape)}")
    return (log_probs.float() * target_mask.float()).sum(dim=1)  # [M] log b_t


def belief_table(values: torch.Tensor, plan: ElicitationPlan) -> tuple[torch.Tensor, torch.Tensor]:
    """[M] log b values -> ``(log_beliefs [B, T+1] float32, mask [B, T+1] bool)``."""
    table = torch.zeros(plan.shape, dtype=torch.float32)  # [B, T+1]
    mask = torch.zeros(plan.shape, dtype=torch.bool)  # [B, T+1]
    table[plan.rollout, plan.turn] = values.float().cpu()
    mask[plan.rollout, plan.turn] = True
    return table, mask


def score_batch_beliefs(
    batch: DataProto, tokenizer, template: str, compute_log_probs: Callable[[DataProto], torch.Tensor], *,
    chunk_size: int = 4096, on_unlocatable: Literal["raise", "exclude"] = "raise",
) -> tuple[torch.Tensor, torch.Tensor]:
    """log b_0..log b_N for every rollout of ``batch``.

    Args:
        batch: the rollout batch (``prompts``, ``responses``, ``attention_mask``; non-tensor
            ``db_turn_ends`` and ``db_target``).
        compute_log_probs: elicitation rows (a DataProto in verl's layout) -> [rows, R] log-probs of
            their response tokens at temperature 1 (on the cluster: the actor worker group).
        chunk_size: elicitation rows built and sent per call (bounds the driver's memory).
    Returns:
        ``(log_beliefs [B, T+1], mask [B, T+1])``; rows of excluded rollouts are all False.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    plan = plan_elicitations(batch, tokenizer, template, on_unlocatable=on_unlocatable)
    pad = pad_id(tokenizer)
    values = []
    for start in range(0, len(plan), chunk_size):
        rows = elicitation_rows(batch, plan, range(start, min(start + chunk_size, len(plan))), pad)
        values.append(target_log_probs(compute_log_probs(rows).cpu(), rows))  # [m]
    flat = torch.cat(values) if values else torch.zeros(0)
    return belief_table(flat, plan)
