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

    def add(self, ids: Sequence[int], loss_mask: Sequence[int]) -> None:
        node = -1
        for j, (token, trained) in enumerate(zip(ids, loss_mask)):
            child = self.children.get((node, token))
            if child is None:
                child = len(self.ids)
                self.children[(node, token)] = child
                self.ids.append(int(token))
                self.parent.append(node)
                self.depth.append(j)
                self.weight.append(0.0)
            self.weight[child] += float(trained)
            node = child
        self.num_sequences += 1

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
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
    rows: list[TreeRow] = []
    row = TreeRow()
    for ids, mask in sequences:
        if len(ids) != len(mask):
            raise ValueError(f"ids and loss_mask differ in length: {len(ids)} vs {len(mask)}")
        if row.num_sequences and len(row) + row.new_nodes(ids) > max_tokens:
            rows.append(row)
            row = TreeRow()
        row.add(ids, mask)
    if row.num_sequences:
        rows.append(row)
    return rows


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


def tree_nll_sum(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Σ over nodes of weight × −log π(node token | its ancestors): the rows' summed token loss."""
    import torch.nn.functional as F

    device = next(model.parameters()).device
    hidden = model.get_decoder()(
        input_ids=batch["ids"].to(device),
        position_ids=batch["positions"].to(device),
        attention_mask=batch["mask"].to(device),
        use_cache=False,
    ).last_hidden_state  # [B, L, H]
    trained = (batch["weight"] > 0) & (batch["parent"] >= 0)  # [B, L]
    rows, nodes = trained.nonzero(as_tuple=True)  # [N], [N]
    parents = batch["parent"][rows, nodes]  # [N] the hidden state that predicts each node
    logits = model.get_output_embeddings()(hidden[rows.to(device), parents.to(device)]).float()  # [N, V]
    nll = F.cross_entropy(logits, batch["ids"][rows, nodes].to(device), reduction="none")  # [N]
    return (nll * batch["weight"][rows, nodes].to(device)).sum()
