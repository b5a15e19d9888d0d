"""A Llama-family decoder (Llama, Qwen2, Qwen3) run straight from its weights, for sampling on CPU.

Shapes: ``B`` rows, ``T`` new tokens of all rows, ``N`` the most new tokens of a row, ``W`` attended columns,
``E`` hidden size, ``Q``/``H`` query/KV heads (``G = Q / H``), ``D`` head size, ``V`` vocabulary.

Same arithmetic as the transformers model in eval mode (the same RMSNorm, rotary and
activation modules are called), with three changes that make a decode step cost about
what its weights and FLOPs cost:

- keys and values live in a :class:`~deltabelief.policy.kv_slab.KVSlab`, written in place;
- q|k|v and gate|up are one matmul each, and every matmul of a few rows runs on weights
  pre-packed for oneDNN (:mod:`~deltabelief.policy.packed_linear`);
- attention is two batched matmuls per layer with the G query heads of a KV head stacked
  (no repeat of the KV heads) and a boolean mask built once per forward.

Results equal the transformers forward up to float rounding (~1e-6 relative). The packed
weights are a snapshot: :meth:`FastDecoder.refresh` rebuilds them, and the policy calls it at
the start of every rollout (~0.5 s for SmolLM2). Tensor version counters cannot tell when to:
the fused AdamW kernel updates weights without bumping them.
"""

from __future__ import annotations

import torch

from deltabelief.policy.kv_slab import KVSlab
from deltabelief.policy.packed_linear import PackedLinear, fused

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "qwen3")


def unsupported_reason(model) -> str | None:
    """Why :class:`FastDecoder` cannot run ``model`` (None: it can)."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        return f"model type {model_type!r} (supported: {', '.join(SUPPORTED_MODEL_TYPES)})"
    if any(p.__class__.__name__.startswith("Lora") for p in model.modules()) or hasattr(model, "peft_config"):
        return "LoRA adapters (the fast decoder reads plain weights)"
    if any(t != "full_attention" for t in getattr(config, "layer_types", None) or []):
        return "sliding-window layers"
    if getattr(config, "mlp_bias", False):
        return "MLP biases"
    return None


class _Layer:
    """One decoder layer's modules and packed weights."""

    def __init__(self, layer, rows_hint: int):
        attention, mlp = layer.self_attn, layer.mlp
        self.input_norm, self.post_norm = layer.input_layernorm, layer.post_attention_layernorm
        self.q_norm, self.k_norm = getattr(attention, "q_norm", None), getattr(attention, "k_norm", None)
        self.qkv = fused(attention.q_proj, attention.k_proj, attention.v_proj, rows_hint=rows_hint)
        self.out = PackedLinear(attention.o_proj.weight, attention.o_proj.bias, rows_hint)
        self.gate_up = fused(mlp.gate_proj, mlp.up_proj, rows_hint=rows_hint)
        self.down = PackedLinear(mlp.down_proj.weight, None, rows_hint)
        self.act = mlp.act_fn


class FastDecoder:
    """See the module docstring. ``model``: a plain (not LoRA) causal LM of a supported type."""

    def __init__(self, model, rows_hint: int = 16):
        reason = unsupported_reason(model)
        if reason is not None:
            raise ValueError(f"the fast decoder cannot run this model: {reason}")
        self.model, self.rows_hint = model, rows_hint
        config = model.config
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.query_heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.groups = self.query_heads // self.kv_heads
        self.refresh()

    @torch.no_grad()
    def refresh(self) -> None:
        """Pack the model's current weights (call after they may have changed)."""
        decoder = self.model.get_decoder()
        self.embed, self.norm, self.rotary = decoder.embed_tokens, decoder.norm, decoder.rotary_emb
        self.layers = [_Layer(layer, self.rows_hint) for layer in decoder.layers]
        head = self.model.get_output_embeddings()
        self.head = PackedLinear(head.weight, head.bias, self.rows_hint)

    def new_slab(self) -> KVSlab:
        weight = self.model.get_output_embeddings().weight
        return KVSlab(len(self.layers), self.kv_heads, self.head_dim, weight.dtype, weight.device)

    @torch.no_grad()
    def forward(self, slab: KVSlab, rows: slice, ids: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """Feed ``ids`` [T] (the new tokens of slab rows ``rows``, row after row, ``counts`` [B] of them
        per row, 0 allowed) after each row's cached tokens; advance the rows' lengths by ``counts``.

        Returns the final hidden state [B', E] of the last new token of each row with a count > 0.
        The matmuls run on the T real tokens only; attention runs on a [B, N] grid (N = max count).
        """
        device, batch, total = ids.device, counts.shape[0], ids.shape[0]
        row_of = torch.repeat_interleave(torch.arange(batch, device=device), counts)  # [T]
        firsts = torch.cumsum(counts, 0) - counts  # [B] flat index of each row's first new token
        offsets = torch.arange(total, device=device) - firsts[row_of]  # [T] index among the row's new tokens
        lengths = slab.lengths[rows]  # [B]
        columns = lengths[row_of] + offsets  # [T]: a token's column is also its position
        new = int(counts.max())
        grid = lengths[:, None] + torch.arange(new, device=device)  # [B, N] columns of the attention grid
        width = int(grid.max()) + 1
        slab.reserve(width)
        blocked = ~(torch.arange(width, device=device) <= grid[:, :, None])[:, None, None]  # [B, 1, 1, N, W]
        dense = total == batch * new  # every row feeds N tokens: flat order is the grid's
        x = self.embed(ids)  # [T, E]
        cos, sin = self.rotary(x, columns[None])  # [1, T, D] each
        cos, sin = cos[0], sin[0]  # [T, D]
        q_size, kv_size = self.query_heads * self.head_dim, self.kv_heads * self.head_dim
        for index, layer in enumerate(self.layers):
            q, k, v = layer.qkv(layer.input_norm(x)).split([q_size, kv_size, kv_size], dim=-1)
            q = q.view(total, self.query_heads, self.head_dim)
            k = k.view(total, self.kv_heads, self.head_dim)
            if layer.q_norm is not None:
                q, k = layer.q_norm(q), layer.k_norm(k)
            q, k = _rotate(q, k, cos, sin)
            keys, values = slab.keys[index][rows], slab.values[index][rows]  # views [B, H, C, D]
            keys[row_of, :, columns] = k  # in place, at each token's row and column
            values[row_of, :, columns] = v.view(total, self.kv_heads, self.head_dim)
            if dense:
                q_grid = q.view(batch, new, self.query_heads, self.head_dim)
            else:  # rows without a token at a grid cell query with zeros; their outputs are dropped
                q_grid = q.new_zeros(batch, new, self.query_heads, self.head_dim)
                q_grid[row_of, offsets] = q
            attended = self._attend(q_grid, keys[:, :, :width], values[:, :, :width], blocked)  # [B, N, QD]
            attended = attended.view(total, -1) if dense else attended[row_of, offsets]  # [T, QD]
            x = x + layer.out(attended)
            gate, up = layer.gate_up(layer.post_norm(x)).chunk(2, dim=-1)
            x = x + layer.down(layer.act(gate) * up)
        slab.lengths[rows] += counts
        fed = counts > 0
        return self.norm(x[(firsts + counts - 1)[fed]])  # [B', E]

    def _attend(self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, blocked: torch.Tensor) -> torch.Tensor:
        """q [B, N, Q, D]; keys/values [B, H, W, D]; blocked [B, 1, 1, N, W] -> [B, N, QD]."""
        batch, new = q.shape[:2]
        groups, heads, dim = self.groups, self.kv_heads, self.head_dim
        # Query head h*G + g reads KV head h (transformers' repeat_kv order): stack a KV head's G queries.
        q = q.view(batch, new, heads, groups, dim).permute(0, 2, 3, 1, 4).reshape(batch, heads, groups * new, dim)
        scores = torch.matmul(q, keys.transpose(-1, -2)) * dim**-0.5  # [B, H, GN, W]
        scores = scores.view(batch, heads, groups, new, -1).masked_fill_(blocked, float("-inf"))
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(values.dtype)  # [B, H, G, N, W]
        out = torch.matmul(probs.view(batch, heads, groups * new, -1), values)  # [B, H, GN, D]
        return out.view(batch, heads, groups, new, dim).permute(0, 3, 1, 2, 4).reshape(batch, new, -1)

    @torch.no_grad()
    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [B, E] -> fp32 logits [B, V]."""
        return self.head(hidden).float()


def _rotate(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """Rotary embedding of q [T, Q, D] and k [T, H, D] with cos/sin [T, D] (transformers' formula)."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    return apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1)
