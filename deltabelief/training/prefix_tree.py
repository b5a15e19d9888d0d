"""Pack conversations that share prefixes into token trees, so a shared prefix runs once.

Teacher games of one knowledge base share long prefixes: every game starts with the same
system prompt and first question, and games whose answers agree keep agreeing turns. A
prefix tree (trie) over the token sequences holds each distinct prefix once. One row of the
tree is one forward: token ``i`` attends to itself and its ancestors (a 4-D mask), its
position id is its depth, and the loss of predicting token ``i`` is read from its parent's
hidden state, weighted by how many conversations pass through ``i`` (and by their loss
mask). The weighted token mean over a row equals the token mean over its conversations,
so training on rows is the same objective as training on the conversations one by one.

Shapes: ``L`` nodes in a row, ``B`` rows in a micro-batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class TreeRow:
    """One packed prefix tree; nodes are in insertion order, so a parent precedes its children."""

    ids: list[int] = field(default_factory=list)
    parent: list[int] = field(default_factory=list)
    """[L] the parent node's index in this row, −1 for a root."""
    depth: list[int] = field(default_factory=list)
    """[L] the node's position in its conversations (the position id)."""
    weight: list[float] = field(default_factory=list)
    """[L] Σ over the conversations through the node of their loss mask at that token."""
    num_sequences: int = 0
    children: dict[tuple[int, int], int] = field(default_factory=dict, repr=False)
    """(parent index, token id) -> child index; parent −1 for roots."""

    def __len__(self) -> int:
        return len(self.ids)

    def new_nodes(self, ids: Sequence[int]) -> int:
        """How many nodes adding ``ids`` would create."""
        node = -1
        for j, token in enumerate(ids):
            node = self.children.get((node, token), None)
            if node is None:
                return len(ids) - j
        return 0

    def add(self, ids: Sequence[int], loss_mask: Sequence[int]) -> list[int]:
        """Add one sequence from the root; returns the node of each of its tokens."""
        path = self.attach(-1, 0, ids, loss_mask)
        self.num_sequences += 1
        return path

    def attach(self, parent: int, depth: int, ids: Sequence[int], loss_mask: Sequence[int]) -> list[int]:
        """Add a chain of tokens below node ``parent`` (−1: from the root), the first at position
        ``depth``; nodes already in the tree are reused. Returns the node of each token."""
        node, path = parent, []
        for j, (token, trained) in enumerate(zip(ids, loss_mask)):
            child = self.children.get((node, token))
            if child is None:
                child = len(self.ids)
                self.children[(node, token)] = child
                self.ids.append(int(token))
                self.parent.append(node)
                self.depth.append(depth + j)
                self.weight.append(0.0)
            self.weight[child] += float(trained)
            node = child
            path.append(node)
        return path

    def ancestor_mask(self) -> np.ndarray:
        """[L, L] bool: row i is True at i's ancestors and at i."""
        n = len(self.ids)
        seen = np.zeros((n, n), dtype=bool)
        for i, p in enumerate(self.parent):
            if p >= 0:
                seen[i] = seen[p]
            seen[i, i] = True
        return seen


def pack_prefix_trees(
    sequences: Sequence[tuple[Sequence[int], Sequence[int]]], max_tokens: int
) -> list[TreeRow]:
    """Pack (ids, loss_mask) pairs, in the given order, into rows of at most ``max_tokens`` nodes.

    A sequence never splits across rows; one longer than ``max_tokens`` gets a row of its own.
    Sort the sequences first (e.g. by ids) to put shared prefixes in the same row.
    """
    return pack_with_paths([ids for ids, _ in sequences], [mask for _, mask in sequences], max_tokens)[0]


def collate_rows(rows: Sequence[TreeRow], pad_id: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Right-pad rows to one length: ids, position ids, additive 4-D mask, parents and weights.

    A pad node attends only to itself, has parent −1 and weight 0.
    """
    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)  # [B, L]
    positions = torch.zeros((len(rows), length), dtype=torch.long)  # [B, L]
    parent = torch.full((len(rows), length), -1, dtype=torch.long)  # [B, L]
    weight = torch.zeros((len(rows), length), dtype=torch.float32)  # [B, L]
    allowed = torch.eye(length, dtype=torch.bool).repeat(len(rows), 1, 1)  # [B, L, L]
    for b, r in enumerate(rows):
        n = len(r)
        ids[b, :n] = torch.tensor(r.ids)
        positions[b, :n] = torch.tensor(r.depth)
        parent[b, :n] = torch.tensor(r.parent)
        weight[b, :n] = torch.tensor(r.weight)
        allowed[b, :n, :n] = torch.from_numpy(r.ancestor_mask())
    mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, float("-inf"))[:, None]  # [B, 1, L, L]
    return {"ids": ids, "positions": positions, "mask": mask, "parent": parent, "weight": weight}


def tree_hidden(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """[B, L, H] the decoder's last hidden state at every node of collated rows."""
    device = next(model.parameters()).device
    return model.get_decoder()(
        input_ids=batch["ids"].to(device),
        position_ids=batch["positions"].to(device),
        attention_mask=batch["mask"].to(device),
        use_cache=False,
    ).last_hidden_state


def read_logprobs(model, hidden: torch.Tensor, batch: dict[str, torch.Tensor], scored: torch.Tensor,
                  temperature: float = 1.0) -> torch.Tensor:
    """[B, L] float32 log π(node token | its ancestors) at ``temperature`` where ``scored``, 0 elsewhere.

    The output head runs only on the parents of the scored nodes (each predicts its child).
    ``scored``: [B, L] bool, only on nodes with a parent. Gradients flow when grad is enabled.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 to score tokens, got {temperature}")
    if getattr(model.config, "final_logit_softcapping", None):
        raise NotImplementedError("models with final_logit_softcapping are not supported by prefix-tree scoring")
    if (scored & (batch["parent"] < 0)).any():
        raise ValueError("a scored node has no parent: nothing predicts the first token of a sequence")
    device = hidden.device
    rows, nodes = scored.nonzero(as_tuple=True)  # [N], [N]
    parents = batch["parent"][rows, nodes]  # [N] the hidden state that predicts each node
    logits = model.get_output_embeddings()(hidden[rows.to(device), parents.to(device)]).float()  # [N, V]
    if temperature != 1.0:
        logits = logits / temperature
    picked = -F.cross_entropy(logits, batch["ids"][rows, nodes].to(device), reduction="none")  # [N]
    return torch.zeros(scored.shape, dtype=torch.float32, device=device).index_put(
        (rows.to(device), nodes.to(device)), picked)


def tree_nll_sum(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Σ over nodes of weight × −log π(node token | its ancestors): the rows' summed token loss."""
    trained = (batch["weight"] > 0) & (batch["parent"] >= 0)  # [B, L]
    logprobs = read_logprobs(model, tree_hidden(model, batch), batch, trained)  # [B, L]
    return -(logprobs * batch["weight"].to(logprobs.device)).sum()


def pack_with_paths(sequences: Sequence[Sequence[int]], score_masks: Sequence[Sequence[int]],
                    max_tokens: int) -> tuple[list[TreeRow], list[tuple[int, list[int]]]]:
    """:func:`pack_prefix_trees` that also returns where each sequence went: (row, node of each token)."""
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
    rows, placements = [TreeRow()], []
    for ids, mask in zip(sequences, score_masks, strict=True):
        if len(ids) != len(mask):
            raise ValueError(f"ids and loss_mask differ in length: {len(ids)} vs {len(mask)}")
        if rows[-1].num_sequences and len(rows[-1]) + rows[-1].new_nodes(ids) > max_tokens:
            rows.append(TreeRow())
        placements.append((len(rows) - 1, rows[-1].add(ids, mask)))
    return [r for r in rows if r.num_sequences], placements


def sequence_logprobs(model, sequences: Sequence[Sequence[int]], score_masks: Sequence[Sequence[int]],
                      pad_id: int, *, max_tokens: int, temperature: float = 1.0) -> torch.Tensor:
    """[B, L] log π of every sequence's scored tokens at ``temperature``, right-padded, 0 off the mask.

    The values of :func:`~deltabelief.training.logprobs.token_logprobs` on the right-padded batch (up
    to float rounding), computed on prefix-tree rows of at most ``max_tokens`` nodes, so a prefix the
    sequences share (the game's prompt) runs once per row. A token shared by several sequences is one
    node: its gradient collects every sequence's share.
    """
    rows, placements = pack_with_paths(sequences, score_masks, max_tokens)
    batch = collate_rows(rows, pad_id, model.get_input_embeddings().weight.dtype)
    scored = (batch["weight"] > 0) & (batch["parent"] >= 0)  # [R, N]
    nodes = read_logprobs(model, tree_hidden(model, batch), batch, scored, temperature)  # [R, N]
    length = max(len(s) for s in sequences)
    row_of = torch.zeros((len(sequences), length), dtype=torch.long)  # [B, L]
    node_of = torch.zeros((len(sequences), length), dtype=torch.long)  # [B, L]
    score = torch.zeros((len(sequences), length), dtype=torch.bool)  # [B, L]
    for i, ((row, path), mask) in enumerate(zip(placements, score_masks)):
        row_of[i, : len(path)] = row
        node_of[i, : len(path)] = torch.tensor(path, dtype=torch.long)
        score[i, : len(path)] = torch.tensor(mask, dtype=torch.bool)
    picked = nodes[row_of.to(nodes.device), node_of.to(nodes.device)]  # [B, L]
    return torch.where(score.to(nodes.device), picked, torch.zeros_like(picked))
