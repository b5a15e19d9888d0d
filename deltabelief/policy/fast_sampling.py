"""The fast sampler (``policy.sampler: fast``): a rollout's conversations decoded in one KV slab.

Shapes: ``B`` rows (running conversations), ``N`` new tokens per row, ``V`` vocabulary.

Same rules, same random draws and the same recorded log-probabilities as
:func:`~deltabelief.policy.sampling.sample_batch` (its module docstring has the rules), so the
tokens equal the legacy sampler's for the same generators up to the rare float-rounding flips
:func:`~deltabelief.policy.sampling.inverse_cdf` documents. What differs is how the model runs:

- a :class:`DecodeSession` lives for a whole rollout and keeps every conversation's KV in a
  :class:`~deltabelief.policy.kv_slab.KVSlab`, so a round feeds only the tokens added since
  the last one, and nothing is copied per token;
- the opening prompt that all games share is run once and its KV copied to every row;
- a new token is fed for running rows only (no padding), and once most rows of a batch have
  stopped the running ones are swapped to its front, so the finished ones cost nothing more;
  the cache is never re-indexed at every stop;
- the model runs through :class:`~deltabelief.policy.fast_decoder.FastDecoder`.
"""

from __future__ import annotations

import torch

from deltabelief.policy.fast_decoder import FastDecoder
from deltabelief.policy.sampling import (
    STOP_LENGTH, Sample, SamplingParams, StopTokens, _decode, draw, record_draw,
)

MIN_SHARED_PREFIX = 16
"""Shared prompt tokens worth a separate forward (fewer: the rows just run them themselves)."""


def common_prefix_length(sequences: list[list[int]]) -> int:
    """Length of the longest prefix every sequence starts with."""
    shortest = min(sequences, key=len)
    for position, token in enumerate(shortest):
        if any(s[position] != token for s in sequences):
            return position
    return len(shortest)


class DecodeSession:
    """The KV of a rollout's running conversations, kept between rounds (see the module docstring).

    ``keys`` name the conversations across rounds (a rollout's game indices); a key not seen
    before starts a new row, a key no longer passed is dropped.
    """

    def __init__(self, decoder: FastDecoder, tokenizer, params: SamplingParams, stops: StopTokens,
                 batch_size: int, pad_id: int):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.decoder, self.tokenizer, self.params, self.stops = decoder, tokenizer, params, stops
        self.batch_size, self.pad_id = batch_size, pad_id
        self.slab = decoder.new_slab()
        self.keys: list = []
        self.fed: list[list[int]] = []
        """Per row, the tokens whose KV the slab holds (checked against each new conversation)."""

    def sample(self, keys: list, conversations: list[list[int]], generators: list[torch.Generator]) -> list[Sample]:
        """One move per conversation; ``conversations[i]`` must extend what key ``keys[i]`` was fed."""
        if not len(keys) == len(conversations) == len(generators):
            raise ValueError(f"{len(keys)} keys, {len(conversations)} conversations, {len(generators)} generators")
        self._arrange_rows(keys)
        self._share_opening(conversations)
        samples: list[Sample] = []
        for start in range(0, len(keys), self.batch_size):
            rows = slice(start, min(start + self.batch_size, len(keys)))
            samples += self._sample_rows(rows, conversations[rows], generators[rows])
        for sample in samples:
            sample.text = _decode(self.tokenizer, sample.token_ids)
        return samples

    def _arrange_rows(self, keys: list) -> None:
        """Slab rows in the order of ``keys``: known keys keep their KV, new keys get empty rows."""
        if len(set(keys)) != len(keys):
            raise ValueError("keys must be distinct")
        known = {key: row for row, key in enumerate(self.keys)}
        new = [key for key in keys if key not in known]
        self.slab.add_rows(len(new))
        for offset, key in enumerate(new):
            known[key] = len(self.keys) + offset
        fed = self.fed + [[] for _ in new]
        order = [known[key] for key in keys]
        self.slab.keep_rows(order)
        self.keys, self.fed = list(keys), [fed[row] for row in order]

    def _share_opening(self, conversations: list[list[int]]) -> None:
        """When every row is empty, run the prefix all conversations share once and copy its KV."""
        if len(conversations) < 2 or any(self.fed):
            return
        shared = min(common_prefix_length(conversations), min(len(c) for c in conversations) - 1)
        if shared < MIN_SHARED_PREFIX:
            return
        ids = torch.tensor(conversations[0][:shared], device=self.slab.device)  # [P]
        self.decoder.forward(self.slab, slice(0, 1), ids, torch.tensor([shared], device=self.slab.device))
        self.slab.copy_prefix(0, shared)
        self.fed = [list(conversations[0][:shared]) for _ in conversations]

    def _sample_rows(self, rows: slice, conversations: list[list[int]],
                     generators: list[torch.Generator]) -> list[Sample]:
        """Sample the conversations of slab rows ``rows`` (sample i starts in row ``rows.start + i``)."""
        device, params, stops = self.slab.device, self.params, self.stops
        fed = self.fed[rows]  # sample i's record of fed tokens (the list objects follow their rows)
        for i, (conversation, tokens) in enumerate(zip(conversations, fed)):
            if len(tokens) >= len(conversation) or conversation[: len(tokens)] != tokens:
                raise ValueError(f"row {rows.start + i}: the conversation does not extend the {len(tokens)} "
                                 "tokens already fed for it")
        news = [conversation[len(tokens):] for conversation, tokens in zip(conversations, fed)]
        for tokens, new in zip(fed, news):
            tokens.extend(new)
        ids = torch.tensor([token for new in news for token in new], device=device)  # [T], no padding
        counts = torch.tensor([len(new) for new in news], device=device)  # [B]
        logits = self.decoder.logits(self.decoder.forward(self.slab, rows, ids, counts))  # [B, V]
        out = [Sample([], [], "", STOP_LENGTH) for _ in news]
        slots = list(range(len(news)))  # slab row - rows.start -> sample index
        running = list(range(len(news)))  # samples still drawing, in slot order
        end = rows.stop
        while True:
            tokens, logps = draw(logits, params, [generators[i] for i in running])  # [R], [R]
            still, feed = [], {}
            for i, token, logp in zip(running, tokens.tolist(), logps.tolist()):
                reason = record_draw(out[i], token, logp, stops, params)
                if reason is None:
                    still.append(i)
                    feed[i] = token
                    fed[i].append(token)
                else:
                    out[i].stop_reason = reason
            if not still:
                return out
            if len(still) <= (end - rows.start) // 2:  # most rows are done: gather the rest at the front
                self._gather_front(rows.start, slots, set(still))
                end = rows.start + len(still)
            active = [slot for slot in range(end - rows.start) if slots[slot] in feed]
            counts = torch.zeros(end - rows.start, dtype=torch.long, device=device)
            counts[active] = 1
            ids = torch.tensor([feed[slots[slot]] for slot in active], device=device)  # [R]
            logits = self.decoder.logits(self.decoder.forward(self.slab, slice(rows.start, end), ids, counts))
            running = [slots[slot] for slot in active]

    def _gather_front(self, start: int, slots: list, keep: set) -> None:
        """Swap rows so the samples in ``keep`` occupy the first slots (``slots`` is updated in place)."""
        front = [slot for slot in range(len(keep)) if slots[slot] not in keep]
        back = [slot for slot in range(len(keep), len(slots)) if slots[slot] in keep]
        if not front:
            return
        self.slab.swap_rows([start + slot for slot in front], [start + slot for slot in back])
        for a, b in zip(front, back):
            slots[a], slots[b] = slots[b], slots[a]
            self.keys[start + a], self.keys[start + b] = self.keys[start + b], self.keys[start + a]
            self.fed[start + a], self.fed[start + b] = self.fed[start + b], self.fed[start + a]
