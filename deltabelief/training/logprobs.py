"""Log-probabilities of chosen tokens, computed only where they are needed.

Shapes: ``B`` sequences, ``L`` padded tokens, ``H`` hidden size, ``V`` vocabulary,
``N`` scored tokens in the batch.

The decoder runs over the whole sequence, but the output head (``H x V``, the
largest matrix of a small model) and the log-softmax run only on the ``N``
positions that predict a scored token. For SmolLM2-135M this saves most of the
``[B, L, V]`` logits memory in training (policy tokens are a small share of a
conversation). Models that post-process logits (e.g. Gemma's soft-capping) are
refused rather than scored wrongly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def right_pad(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad ids -> (input_ids [B, L] long, attention_mask [B, L] long)."""
    if not sequences:
        raise ValueError("right_pad needs at least one sequence")
    length = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = 1
    return ids, mask


def pad_rows(rows: list[list[float]] | list[list[int]], length: int, dtype=torch.float32) -> torch.Tensor:
    """Right-pad ragged rows with zeros to ``[B, length]``."""
    out = torch.zeros((len(rows), length), dtype=dtype)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row, dtype=dtype)
    return out


def token_logprobs(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    score_mask: torch.Tensor,
    *,
    temperature: float = 1.0,
) -> torch.Tensor:
    """log π(input_ids[b, j] | input_ids[b, :j]) at ``temperature`` where ``score_mask`` is set.

    Args:
        model: a causal LM (plain or peft-wrapped) with ``get_decoder`` and ``get_output_embeddings``.
        input_ids: [B, L] long, right-padded.
        attention_mask: [B, L] 1 on real tokens.
        score_mask: [B, L] 1 on tokens to score; column 0 must be 0 (nothing predicts it).
        temperature: logits are divided by it before the log-softmax (the sampling temperature).
    Returns:
        [B, L] float32, 0 where ``score_mask`` is 0. Gradients flow when grad is enabled.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 to score tokens, got {temperature}")
    if getattr(model.config, "final_logit_softcapping", None):
        raise NotImplementedError("models with final_logit_softcapping are not supported by token_logprobs")
    score = score_mask.bool()
    if score[:, 0].any():
        raise ValueError("score_mask[:, 0] must be 0: the first token has no prediction")
    device = next(model.parameters()).device
    hidden = model.get_decoder()(
        input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), use_cache=False
    ).last_hidden_state  # [B, L, H]
    predicts = score[:, 1:].to(device)  # [B, L-1] position j predicts token j+1
    chosen = hidden[:, :-1][predicts]  # [N, H]
    logits = model.get_output_embeddings()(chosen).float()  # [N, V]
    if temperature != 1.0:
        logits = logits / temperature
    targets = input_ids[:, 1:].to(device)[predicts]  # [N]
    picked = -F.cross_entropy(logits, targets, reduction="none")  # [N] log-softmax of the chosen ids
    shifted = torch.zeros(predicts.shape, dtype=torch.float32, device=device).masked_scatter(predicts, picked)  # [B, L-1]
    return F.pad(shifted, (1, 0))  # [B, L]: column j scores token j
