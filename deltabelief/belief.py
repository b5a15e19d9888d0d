"""Belief elicitation: the policy's own log-probability of the hidden target after every turn.

Paper symbols (docs/method.md, §1):

- h_t: the history after turn t; in a :class:`~deltabelief.trajectory.Trajectory` it is
  ``input_ids[:e_t]`` with e_0 = ``prompt_length`` and e_t = ``turns[t-1].end_of_turn``.
  Both ends sit just after an assistant header, so the elicitation is an assistant message.
- log b_t = Σ_k log π(y_k | h_t, elicitation prefix, y_<k): the sum over the target's tokens,
  at temperature 1, under the model passed in (the current policy), no length normalisation.
  Config: ``belief.template`` (the elicitation, ``{target}`` marks y); metric ``belief/log_belief``.
- ΔBelief_t = log b_t − log b_{t−1}, t = 1..N (:func:`delta_beliefs`); metric ``belief/delta``.

Shape notation: B trajectories, T the most turns of any of them, L packed tokens,
K target tokens, V vocabulary.

Elicitation tokens are built piecewise so the target's positions are known by construction:
``tokens(prefix) + tokens(target)``, where the prefix is the template text before ``{target}``.
Whitespace that ends the prefix is moved onto the target (byte-level BPE tokenizers such as
SmolLM2's and Qwen3's attach a leading space to the following word), and the piecewise ids are
compared with the ids of the whole rendered text; a difference is reported in
:attr:`BeliefScores.tokenization_mismatches`, never hidden. The text after the target (and the
end-of-turn marker) is not fed: under causal attention it cannot change the target's
log-probability.

:func:`score_beliefs` scores all N+1 prefixes of a trajectory in one packed forward pass:
``input_ids[:e_N] | suffix_0 | … | suffix_N`` where suffix_t attends to ``input_ids[:e_t]`` and
causally to itself only (a 4-D additive attention mask, 0 where allowed and −inf elsewhere),
with position ids continuing from e_t. :func:`score_beliefs_per_prefix` is the slow reference:
one plain forward per prefix. The layout has one home, :func:`pack_prefixes` and
:func:`score_packed_rows`; the verl actor workers use the same two
(:mod:`deltabelief.integrations.verl.belief_worker`).
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Literal, Sequence

import torch

from deltabelief.policy.chat import pad_id
from deltabelief.trajectory import Trajectory

log = logging.getLogger(__name__)

TARGET_MARKER = "{target}"


class UnlocatableTargetError(ValueError):
    """The target's tokens cannot be located in the elicitation text."""


# ---------------------------------------------------------------- elicitation tokens


@dataclass(frozen=True)
class Elicitation:
    """The tokens appended after h_t: ``prefix_ids + target_ids`` (the suffix)."""

    prefix_ids: tuple[int, ...]
    """Template text before the target (its trailing whitespace moved onto the target)."""
    target_ids: tuple[int, ...]
    """The scored tokens y_1..y_K."""
    matches_whole_text: bool
    """True when the piecewise ids equal the tokenization of the whole rendered template."""

    @property
    def ids(self) -> list[int]:
        return list(self.prefix_ids) + list(self.target_ids)


def build_elicitation(tokenizer, template: str, target: str) -> Elicitation:
    """Tokenize ``template`` around ``target`` piecewise; raise :class:`UnlocatableTargetError`
    when the template has no single ``{target}`` marker or the target has no tokens."""
    count = template.count(TARGET_MARKER)
    if count != 1:
        raise UnlocatableTargetError(
            f"target {target!r}: template {template!r} must contain {TARGET_MARKER!r} exactly once (found {count})"
        )
    if not target.strip():
        raise UnlocatableTargetError(f"target {target!r} is empty; nothing to score in template {template!r}")
    before, after = template.split(TARGET_MARKER)
    stripped = before.rstrip()
    target_text = before[len(stripped) :] + target  # leading whitespace belongs to the target's first token

    def encode(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []

    prefix_ids, target_ids, after_ids = encode(stripped), encode(target_text), encode(after)
    if not target_ids:
        raise UnlocatableTargetError(f"target {target!r} yields no tokens in template {template!r}")
    whole = encode(before + target + after)
    return Elicitation(tuple(prefix_ids), tuple(target_ids), whole == prefix_ids + target_ids + after_ids)


# ---------------------------------------------------------------- results


@dataclass(frozen=True)
class ExcludedTrajectory:
    index: int
    """Row in the batch passed to the scorer."""
    target_id: str
    sample_index: int
    reason: str


@dataclass
class BeliefScores:
    """log b_t for t = 0..N of every trajectory, padded to [B, T+1]."""

    log_beliefs: torch.Tensor
    """[B, T+1] float32; column t is log b_t; 0 where ``mask`` is False."""
    mask: torch.Tensor
    """[B, T+1] bool; True for t = 0..N_i of every scored trajectory, all False for excluded ones."""
    num_target_tokens: torch.Tensor
    """[B] long; K of each trajectory's target (0 when excluded)."""
    excluded: list[ExcludedTrajectory] = field(default_factory=list)
    """Trajectories not scored (``on_unlocatable="exclude"``), with the reason."""
    tokenization_mismatches: list[str] = field(default_factory=list)
    """Targets whose piecewise ids differ from the whole-text tokenization (scored piecewise)."""

    def per_trajectory(self) -> list[torch.Tensor]:
        """The ragged view: one [N_i+1] tensor per trajectory (empty when excluded)."""
        return [row[m] for row, m in zip(self.log_beliefs, self.mask)]


def turn_ends(trajectory: Trajectory) -> list[int]:
    """[e_0, e_1, …, e_N]: where h_0..h_N end in ``input_ids``; checked to be increasing and in range."""
    ends = [trajectory.prompt_length] + [turn.end_of_turn for turn in trajectory.turns]
    where = f"trajectory (target {trajectory.target.id!r}, sample {trajectory.sample_index})"
    if ends[0] <= 0:
        raise ValueError(f"{where}: prompt_length must be positive, got {ends[0]}")
    for t in range(1, len(ends)):
        if ends[t] <= ends[t - 1]:
            raise ValueError(f"{where}: turns[{t - 1}].end_of_turn={ends[t]} is not after "
                             f"h_{t - 1}'s end {ends[t - 1]}")
    if ends[-1] > len(trajectory.input_ids):
        raise ValueError(f"{where}: h_N ends at {ends[-1]} beyond its {len(trajectory.input_ids)} input_ids")
    return ends


def elicitations_for(
    tokenizer, trajectories: Sequence[Trajectory], template: str, on_unlocatable: str
) -> tuple[list[Elicitation | None], list[ExcludedTrajectory], list[str]]:
    """One elicitation per trajectory (None when excluded); built once per distinct target."""
    if on_unlocatable not in ("raise", "exclude"):
        raise ValueError(f"on_unlocatable must be 'raise' or 'exclude', got {on_unlocatable!r}")
    cache: dict[str, Elicitation | UnlocatableTargetError] = {}
    out: list[Elicitation | None] = []
    excluded: list[ExcludedTrajectory] = []
    for index, traj in enumerate(trajectories):
        text = traj.target.answer
        if text not in cache:
            try:
                cache[text] = build_elicitation(tokenizer, template, text)
            except UnlocatableTargetError as err:
                if on_unlocatable == "raise":
                    raise
                cache[text] = err
        item = cache[text]
        if isinstance(item, UnlocatableTargetError):
            excluded.append(ExcludedTrajectory(index, traj.target.id, traj.sample_index, str(item)))
            out.append(None)
        else:
            out.append(item)
    mismatches = sorted(t for t, e in cache.items() if isinstance(e, Elicitation) and not e.matches_whole_text)
    if mismatches:
        log.warning("elicitation tokens differ from whole-text tokenization for %d target(s), e.g. %r",
                    len(mismatches), mismatches[0])
    if excluded:
        log.warning("excluded %d trajectories from belief scoring, e.g. %s", len(excluded), excluded[0].reason)
    return out, excluded, mismatches


# ---------------------------------------------------------------- packing


@dataclass
class PackedRow:
    """One trajectory's packed sequence and where to read the target log-probabilities."""

    ids: list[int]
    """[L_i] input_ids[:e_N] followed by suffix_0 … suffix_N."""
    history: int
    """e_N: columns before this are the shared history, from here on the suffix block."""
    position_ids: list[int]
    segment_start: list[int]
    """[L_i] first column of the token's own causal segment (0 for the shared history)."""
    context_end: list[int]
    """[L_i] columns [0, context_end) are also visible (e_t for suffix_t, 0 for the history)."""
    read_positions: torch.Tensor
    """[N+1, K] position whose logits predict target token k after h_t."""
    target_ids: torch.Tensor
    """[K]"""


def packed_length(ends: Sequence[int], suffix_length: int) -> int:
    """Tokens of one packed row: h_N once plus N+1 suffixes."""
    return ends[-1] + len(ends) * suffix_length


def per_prefix_length(ends: Sequence[int], suffix_length: int) -> int:
    """Tokens the per-prefix reference feeds: h_t + suffix for every t."""
    return sum(end + suffix_length for end in ends)


def pack_prefixes(input_ids: Sequence[int], ends: Sequence[int], elicitation: Elicitation) -> PackedRow:
    """The packed row for h_t = ``input_ids[:ends[t]]``, t = 0..N (``ends`` increasing, checked by the caller)."""
    suffix, num_prefix = elicitation.ids, len(elicitation.prefix_ids)
    base = ends[-1]
    ids = list(input_ids[:base])
    position_ids, segment_start, context_end = list(range(base)), [0] * base, [0] * base
    read = []
    for end in ends:  # suffix_t for h_t = input_ids[:end]
        start = len(ids)
        ids += suffix
        position_ids += range(end, end + len(suffix))  # positions continue from e_t
        segment_start += [start] * len(suffix)
        context_end += [end] * len(suffix)
        # y_k sits at start + num_prefix + k; the logits one position earlier predict it, and for
        # k = 0 with an empty prefix that earlier position is h_t's last token (end - 1).
        read.append([start + num_prefix + k - 1 if num_prefix + k > 0 else end - 1
                     for k in range(len(elicitation.target_ids))])
    return PackedRow(ids, base, position_ids, segment_start, context_end,
                     torch.tensor(read, dtype=torch.long), torch.tensor(elicitation.target_ids, dtype=torch.long))


def _pack(trajectory: Trajectory, elicitation: Elicitation) -> PackedRow:
    return pack_prefixes(trajectory.input_ids, turn_ends(trajectory), elicitation)


def packed_attention_mask(segment_start: torch.Tensor, context_end: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The additive 4-D mask for packed rows.

    Args:
        segment_start: [B, L] long; query i sees keys j with segment_start[i] <= j <= i ...
        context_end: [B, L] long; ... and keys j < context_end[i].
    Returns:
        [B, 1, L, L] of ``dtype``: 0 where attention is allowed, −inf elsewhere.
    """
    length = segment_start.shape[1]
    query = torch.arange(length)[None, :, None]  # [1, L, 1]
    key = torch.arange(length)[None, None, :]  # [1, 1, L]
    allowed = (key >= segment_start[:, :, None]) & (key <= query)  # [B, L, L] own segment, causal
    allowed |= key < context_end[:, :, None]  # [B, L, L] plus the shared history h_t
    mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, float("-inf"))
    return mask[:, None]  # [B, 1, L, L]


def _collate(packs: list[PackedRow], pad_id: int) -> dict:
    """Pad packed rows to one length L with the padding *between* history and suffix block.

    The suffix blocks end at column L in every row, so rows with the same number of turns and
    target length read their logits at the same columns (a small ``logits_to_keep``). Every column
    index at or after a row's history end moves right by that row's padding; a pad token attends
    only to itself (no all −inf rows).
    """
    length = max(len(p.ids) for p in packs)
    ids = torch.full((len(packs), length), pad_id, dtype=torch.long)  # [B, L]
    positions = torch.zeros((len(packs), length), dtype=torch.long)  # [B, L]
    start = torch.arange(length).repeat(len(packs), 1)  # [B, L] pads: own segment = itself
    context = torch.zeros((len(packs), length), dtype=torch.long)  # [B, L]
    reads = []
    for row, p in enumerate(packs):
        shift = length - len(p.ids)  # padding inserted at column p.history

        def moved(index: torch.Tensor, p: PackedRow = p, shift: int = shift) -> torch.Tensor:
            return torch.where(index >= p.history, index + shift, index)

        columns = moved(torch.arange(len(p.ids)))  # [L_i] where each packed token lands
        ids[row, columns] = torch.tensor(p.ids)
        positions[row, columns] = torch.tensor(p.position_ids)
        start[row, columns] = moved(torch.tensor(p.segment_start))
        context[row, columns] = torch.tensor(p.context_end)  # history columns do not move
        reads.append(moved(p.read_positions))  # [N+1, K]
    return {"ids": ids, "positions": positions, "start": start, "context": context, "reads": reads}


@contextmanager
def eval_mode(model) -> Iterator[None]:
    """Eval mode without gradients for the block; the model's training flag is restored after."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _model_dtype(model) -> torch.dtype:
    """The hidden states' dtype (the attention mask must match it for sdpa); LoRA weights may differ."""
    return model.get_input_embeddings().weight.dtype


def _model_device(model) -> torch.device:
    return next(model.parameters()).device


def score_packed_rows(model, packs: list[PackedRow], pad_id: int,
                      mask_dtype: torch.dtype | None = None) -> list[torch.Tensor]:
    """One forward over a padded batch of packed rows -> one [N_i+1] log-belief tensor per row.

    The caller puts the model in eval mode without gradients. ``mask_dtype``: the attention
    computation's dtype (default: the embedding weights'); under autocast or FSDP mixed precision
    pass the compute dtype.
    """
    batch = _collate(packs, pad_id)
    device = _model_device(model)
    mask = packed_attention_mask(batch["start"], batch["context"], mask_dtype or _model_dtype(model))  # [B, 1, L, L]
    keep = torch.unique(torch.cat([r.flatten() for r in batch["reads"]]))  # [U] sorted columns to read
    logits = model(
        input_ids=batch["ids"].to(device),
        position_ids=batch["positions"].to(device),
        attention_mask=mask.to(device),
        logits_to_keep=keep.to(device),
        use_cache=False,
    ).logits  # [B, U, V]
    out = []
    for row, p in enumerate(packs):
        columns = torch.searchsorted(keep, batch["reads"][row]).to(device)  # [N+1, K] index into U
        logprobs = torch.log_softmax(logits[row, columns].float(), dim=-1)  # [N+1, K, V] temperature 1
        target = p.target_ids.to(device).expand(columns.shape)  # [N+1, K]
        token_lp = logprobs.gather(-1, target[..., None])[..., 0]  # [N+1, K] log π(y_k | h_t, prefix, y_<k)
        out.append(token_lp.sum(-1).cpu())  # [N+1] log b_t = Σ_k log π(y_k | …), no length normalisation
    return out


def assemble_scores(
    trajectories: Sequence[Trajectory],
    rows: dict[int, torch.Tensor],
    elicitations: list[Elicitation | None],
    excluded: list[ExcludedTrajectory],
    mismatches: list[str],
) -> BeliefScores:
    width = max((t.num_turns for t in trajectories), default=0) + 1
    log_beliefs = torch.zeros((len(trajectories), width), dtype=torch.float32)  # [B, T+1]
    mask = torch.zeros((len(trajectories), width), dtype=torch.bool)  # [B, T+1]
    for index, values in rows.items():
        log_beliefs[index, : len(values)] = values
        mask[index, : len(values)] = True
    num_tokens = torch.tensor([len(e.target_ids) if e else 0 for e in elicitations], dtype=torch.long)  # [B]
    return BeliefScores(log_beliefs, mask, num_tokens, excluded, mismatches)


def score_beliefs(
    model,
    tokenizer,
    trajectories: Sequence[Trajectory],
    template: str = "Is it '{target}'?",
    *,
    on_unlocatable: Literal["raise", "exclude"] = "raise",
    batch_size: int = 8,
) -> BeliefScores:
    """log b_0..log b_N of every trajectory, one packed forward pass per trajectory.

    Args:
        model: a causal LM (transformers, optionally peft-wrapped) accepting a 4-D attention mask.
        tokenizer: its tokenizer.
        trajectories: B rollouts; h_t ends at ``prompt_length`` / ``turns[t-1].end_of_turn``.
        template: the elicitation, with ``{target}`` exactly once.
        on_unlocatable: ``"raise"`` :class:`UnlocatableTargetError`, or ``"exclude"`` the
            trajectory and list it in :attr:`BeliefScores.excluded`.
        batch_size: trajectories per padded forward (sorted by packed length first).
    Returns:
        :class:`BeliefScores` with ``log_beliefs`` [B, T+1] and ``mask`` [B, T+1].

    The model is put in eval mode under ``torch.no_grad`` for the call and restored afterwards.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    elicitations, excluded, mismatches = elicitations_for(tokenizer, trajectories, template, on_unlocatable)
    packs = {i: _pack(t, e) for i, (t, e) in enumerate(zip(trajectories, elicitations)) if e is not None}
    order = sorted(packs, key=lambda i: len(packs[i].ids), reverse=True)
    pad = pad_id(tokenizer)
    rows: dict[int, torch.Tensor] = {}
    with eval_mode(model):
        for first in range(0, len(order), batch_size):
            chunk = order[first : first + batch_size]
            for index, values in zip(chunk, score_packed_rows(model, [packs[i] for i in chunk], pad)):
                rows[index] = values
    return assemble_scores(trajectories, rows, elicitations, excluded, mismatches)


def score_beliefs_per_prefix(
    model,
    tokenizer,
    trajectories: Sequence[Trajectory],
    template: str = "Is it '{target}'?",
    *,
    on_unlocatable: Literal["raise", "exclude"] = "raise",
) -> BeliefScores:
    """The slow reference for :func:`score_beliefs`: one plain forward per prefix h_t + suffix."""
    elicitations, excluded, mismatches = elicitations_for(tokenizer, trajectories, template, on_unlocatable)
    device = _model_device(model)
    rows: dict[int, torch.Tensor] = {}
    with eval_mode(model):
        for index, (traj, elicitation) in enumerate(zip(trajectories, elicitations)):
            if elicitation is None:
                continue
            values = []
            for end in turn_ends(traj):
                ids = torch.tensor([list(traj.input_ids[:end]) + elicitation.ids], device=device)  # [1, e_t + S]
                target = torch.tensor(elicitation.target_ids, device=device)  # [K]
                # the suffix ends with y_K, so the last K+1 positions hold the logits for y_1..y_K (and one past)
                logits = model(input_ids=ids, use_cache=False, logits_to_keep=len(target) + 1).logits[0]  # [K+1, V]
                logprobs = torch.log_softmax(logits[:-1].float(), dim=-1)  # [K, V] row k predicts y_k
                values.append(logprobs.gather(-1, target[:, None]).sum().cpu())  # log b_t
            rows[index] = torch.stack(values)  # [N+1]
    return assemble_scores(trajectories, rows, elicitations, excluded, mismatches)


# ---------------------------------------------------------------- ΔBelief


@dataclass
class DeltaBeliefs:
    delta: torch.Tensor
    """[B, T] ΔBelief_t = log b_t − log b_{t−1} (column t−1 holds turn t); 0 where not defined."""
    positive: torch.Tensor
    """[B, T] max(ΔBelief_t, 0), the paper's rewarded part."""
    turn_mask: torch.Tensor
    """[B, T] bool; True where both log b_{t−1} and log b_t were scored."""
    num_nonfinite: int
    """ΔBelief values that were NaN or ±inf and were set to 0 (metric ``belief/num_nonfinite``)."""


def delta_beliefs(log_beliefs: torch.Tensor, mask: torch.Tensor) -> DeltaBeliefs:
    """ΔBelief per turn from log beliefs.

    Args:
        log_beliefs: [B, T+1] log b_0..log b_T.
        mask: [B, T+1] bool, True where log b_t was scored.
    Returns:
        :class:`DeltaBeliefs` with [B, T] tensors; non-finite values are zeroed and counted.
    """
    if log_beliefs.shape != mask.shape or log_beliefs.dim() != 2:
        raise ValueError(f"log_beliefs {tuple(log_beliefs.shape)} and mask {tuple(mask.shape)} must both be [B, T+1]")
    mask = mask.bool()
    turn_mask = mask[:, 1:] & mask[:, :-1]  # [B, T]
    raw = log_beliefs[:, 1:] - log_beliefs[:, :-1]  # [B, T] ΔBelief_t = log b_t − log b_{t−1}
    nonfinite = turn_mask & ~torch.isfinite(raw)  # [B, T]
    delta = torch.where(turn_mask & ~nonfinite, raw, torch.zeros_like(raw))  # [B, T] guarded
    if nonfinite.any():
        log.warning("%d non-finite ΔBelief values set to 0", int(nonfinite.sum()))
    return DeltaBeliefs(delta, delta.clamp(min=0.0), turn_mask, int(nonfinite.sum()))
