"""Linear layers with their weights pre-packed for oneDNN, for decoding on CPU.

Shapes: ``M`` rows (tokens), ``I`` input features, ``O`` output features.

``F.linear`` hands MKL the weight in PyTorch's layout and MKL re-packs it on every call;
for the few rows of a decode step that packing dominates (SmolLM2's output head, 576 -> 49152,
at 16 rows: ~40 ms with ``F.linear``, ~14 ms pre-packed; the decoder layers gain 20-40%).
Packing once costs about one forward's weight read. Results differ from ``F.linear`` only
by float rounding (another summation order, ~1e-6 relative).

For many rows (a prefill) MKL's own packing pays off again, so rows above ``PACKED_MAX_ROWS``
use ``F.linear`` on the original weight.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

PACKED_MAX_ROWS = 64
"""Above this many rows ``F.linear`` is as fast or faster (measured on 2 AVX2 cores)."""


def onednn_packing_available(weight: torch.Tensor) -> bool:
    return weight.device.type == "cpu" and weight.dtype == torch.float32 and torch.backends.mkldnn.is_available()


class PackedLinear:
    """``y = x W^T + b`` with ``W`` also held pre-packed for oneDNN (when the platform has it)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, rows_hint: int = 16):
        self.weight = weight.detach()  # [O, I], shared with the model (no copy)
        self.bias = None if bias is None else bias.detach()  # [O]
        self.packed = (
            torch.ops.mkldnn._reorder_linear_weight(self.weight, rows_hint)
            if onednn_packing_available(self.weight) else None
        )

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x [M, I] -> [M, O]."""
        if self.packed is None or x.shape[0] > PACKED_MAX_ROWS:
            return F.linear(x, self.weight, self.bias)
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")


def fused(*linears: torch.nn.Linear, rows_hint: int = 16) -> PackedLinear:
    """One :class:`PackedLinear` computing several linears of the same input, outputs concatenated
    (q|k|v, gate|up): one call instead of several, with more columns per call."""
    weight = torch.cat([layer.weight.detach() for layer in linears])  # [sum O, I]
    biases = [layer.bias for layer in linears]
    if any(b is not None for b in biases):
        biases = [b.detach() if b is not None else layer.weight.new_zeros(layer.weight.shape[0])
                  for b, layer in zip(biases, linears)]
        return PackedLinear(weight, torch.cat(biases), rows_hint)
    return PackedLinear(weight, None, rows_hint)
