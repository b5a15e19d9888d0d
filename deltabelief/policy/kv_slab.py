"""A preallocated KV cache for a batch of conversations of different lengths.

Shapes: ``B`` rows (conversations), ``A`` decoder layers, ``H`` KV heads, ``C`` capacity
(columns), ``D`` head size, ``N`` new tokens per row.

Row ``b`` holds its conversation's keys and values left-aligned in columns ``[0, lengths[b])``;
columns past a row's length hold garbage and are never attended to. New tokens are written in
place at ``lengths[b] + j`` (no concatenation, no copy of what is cached), so a decode step
costs the same at turn 20 as at turn 1 apart from attention itself. The capacity grows by
reallocation, rarely (in steps of ``GROWTH`` columns), and finished rows are dropped once per
round (:meth:`keep_rows`), not once per token; rows still decoding can be gathered at the front
of a batch (:meth:`swap_rows`) so that finished ones stop costing attention.
"""

from __future__ import annotations

import torch

GROWTH = 256
"""Columns added at a time when a write would not fit."""


class KVSlab:
    def __init__(self, num_layers: int, kv_heads: int, head_dim: int, dtype: torch.dtype, device):
        self.shape = (kv_heads, head_dim)
        self.num_layers, self.dtype, self.device = num_layers, dtype, device
        self.lengths = torch.zeros(0, dtype=torch.long, device=device)  # [B] cached tokens per row
        self.keys: list[torch.Tensor] = []  # A x [B, H, C, D]
        self.values: list[torch.Tensor] = []  # A x [B, H, C, D]
        self._allocate(0, 0)

    @property
    def rows(self) -> int:
        return int(self.lengths.shape[0])

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[2]

    def _allocate(self, rows: int, capacity: int) -> None:
        shape = (rows, *self.shape[:1], capacity, self.shape[1])
        self.keys = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(self.num_layers)]
        self.values = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(self.num_layers)]

    def add_rows(self, count: int) -> None:
        """Append ``count`` empty rows (length 0)."""
        old_keys, old_values, rows = self.keys, self.values, self.rows
        self._allocate(rows + count, self.capacity)
        for layer in range(self.num_layers):
            self.keys[layer][:rows] = old_keys[layer]
            self.values[layer][:rows] = old_values[layer]
        self.lengths = torch.cat([self.lengths, self.lengths.new_zeros(count)])

    def keep_rows(self, index: list[int]) -> None:
        """Keep only rows ``index`` (in that order); a no-op when that is every row in order."""
        if index == list(range(self.rows)):
            return
        positions = torch.tensor(index, dtype=torch.long, device=self.device)
        self.keys = [k.index_select(0, positions) for k in self.keys]
        self.values = [v.index_select(0, positions) for v in self.values]
        self.lengths = self.lengths.index_select(0, positions)

    def swap_rows(self, first: list[int], second: list[int]) -> None:
        """Exchange rows ``first[i]`` and ``second[i]`` (all distinct); copies only those rows."""
        a = torch.tensor(first, dtype=torch.long, device=self.device)
        b = torch.tensor(second, dtype=torch.long, device=self.device)
        for cache in (*self.keys, *self.values, self.lengths):
            rows_a, rows_b = cache.index_select(0, a), cache.index_select(0, b)
            cache.index_copy_(0, a, rows_b)
            cache.index_copy_(0, b, rows_a)

    def reserve(self, columns: int) -> None:
        """Make room for writes up to column ``columns`` (exclusive) in every row."""
        if columns <= self.capacity:
            return
        capacity = -(-columns // GROWTH) * GROWTH
        old_keys, old_values, old = self.keys, self.values, self.capacity
        self._allocate(self.rows, capacity)
        for layer in range(self.num_layers):
            self.keys[layer][:, :, :old] = old_keys[layer]
            self.values[layer][:, :, :old] = old_values[layer]

    def copy_prefix(self, source_row: int, length: int) -> None:
        """Copy row ``source_row``'s first ``length`` columns into every row; all lengths become ``length``."""
        for cache in (*self.keys, *self.values):
            cache[:, :, :length] = cache[source_row : source_row + 1, :, :length]
        self.lengths.fill_(length)
