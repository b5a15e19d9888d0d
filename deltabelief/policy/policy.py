"""The questioner: a causal LM, its tokenizer and its sampling settings in one object."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from deltabelief.config import PolicyConfig
from deltabelief.policy.chat import end_of_turn_ids, pad_id
from deltabelief.policy.fast_decoder import FastDecoder, unsupported_reason
from deltabelief.policy.fast_sampling import DecodeSession
from deltabelief.policy.loading import load_causal_lm
from deltabelief.policy.lora import apply_lora, merged_copy
from deltabelief.policy.sampling import Generators, PrefixCache, Sample, SamplingParams, StopTokens, sample_batch

log = logging.getLogger(__name__)


def sampling_params(config: PolicyConfig, eval_mode: bool = False) -> SamplingParams:
    """The training settings (temperature/top_p/top_k) of ``config``, or its eval_* ones."""
    if eval_mode:
        return SamplingParams(config.eval_temperature, config.eval_top_p, config.eval_top_k, config.max_new_tokens)
    return SamplingParams(config.temperature, config.top_p, config.top_k, config.max_new_tokens)


def move_stop_tokens(tokenizer, vocab_size: int, extra_eos: list[int] = ()) -> StopTokens:
    """Where a move ends: the tokenizer's eos, ``extra_eos`` and the chat template's end-of-turn
    marker when it is a single special token."""
    extra = list(extra_eos)
    marker = end_of_turn_ids(tokenizer)[:1]
    if marker and marker[0] in tokenizer.all_special_ids:
        extra += marker
    return StopTokens.for_tokenizer(tokenizer, vocab_size, tuple(extra))


class Policy:
    """Model + tokenizer + :class:`~deltabelief.config.PolicyConfig`.

    ``model`` may be a peft model (LoRA); :meth:`save` always writes merged weights.
    """

    def __init__(self, model, tokenizer, config: PolicyConfig):
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self._stops: StopTokens | None = None
        self._decoder: FastDecoder | None = None
        self._fast_refused: str | None = None

    @classmethod
    def from_config(cls, config: PolicyConfig, seed: int = 0, device: torch.device | None = None) -> "Policy":
        """Load ``config.model`` onto ``device`` (default: ``config.device``) and apply LoRA if enabled
        (the adapters are made on the model's device). ``seed`` only matters for the random 'tiny' model."""
        model, tokenizer = load_causal_lm(config.model, config.dtype, seed, device or config.device)
        return cls(apply_lora(model, config.lora), tokenizer, config)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def sampling_params(self, eval_mode: bool = False) -> SamplingParams:
        """Training settings (temperature/top_p/top_k) or the eval_* ones."""
        return sampling_params(self.config, eval_mode)

    def stop_tokens(self) -> StopTokens:
        """Stop at the tokenizer's eos, the generation config's eos ids and the template's
        end-of-turn marker (when it is a single special token); computed once."""
        if self._stops is None:
            vocab = self.model.get_output_embeddings().weight.shape[0]
            extra = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
            extra = [] if extra is None else [extra] if isinstance(extra, int) else list(extra)
            self._stops = move_stop_tokens(self.tokenizer, vocab, extra)
        return self._stops

    def sample(
        self, prompt_id_lists: list[list[int]], *, generator: Generators, eval_mode: bool = False,
        batch_size: int | None = None, prefixes: list[PrefixCache | None] | None = None, keep_cache: bool = False,
    ) -> list[Sample]:
        """One move per prompt, in forward batches of ``batch_size`` (default ``config.batch_size``).

        Chunks are taken in order, so the same generator state gives the same samples. With one
        generator per prompt (a list), a prompt's samples do not depend on the batch size either.
        ``prefixes``/``keep_cache``: resume rows from, and return, KV prefix caches (see sampling.py).
        """
        size = batch_size or self.config.batch_size
        if size < 1:
            raise ValueError(f"batch_size must be at least 1, got {size}")
        if prefixes is not None and len(prefixes) != len(prompt_id_lists):
            raise ValueError(f"{len(prompt_id_lists)} prompts but {len(prefixes)} prefix caches")
        if isinstance(generator, list) and len(generator) != len(prompt_id_lists):
            raise ValueError(f"{len(prompt_id_lists)} prompts but {len(generator)} generators")
        params, stops = self.sampling_params(eval_mode), self.stop_tokens()
        samples: list[Sample] = []
        for start in range(0, len(prompt_id_lists), size):
            samples.extend(
                sample_batch(
                    self.model, self.tokenizer, prompt_id_lists[start : start + size], params,
                    generator=generator if isinstance(generator, torch.Generator) else generator[start : start + size],
                    stops=stops, keep_cache=keep_cache,
                    prefixes=None if prefixes is None else prefixes[start : start + size],
                )
            )
        return samples

    def decode_session(self, *, eval_mode: bool = False, batch_size: int | None = None) -> DecodeSession | None:
        """A fast-sampler session for one rollout (fast_sampling.py), or None when the legacy
        sampler is to run: ``policy.sampler: legacy``, ``keep_kv_cache: false`` or a model the
        fast decoder cannot run (said once in the log)."""
        if self.config.sampler == "legacy" or not self.config.keep_kv_cache:
            return None
        reason = unsupported_reason(self.model)
        if reason is not None:
            if reason != self._fast_refused:
                log.info("policy.sampler=fast falls back to the legacy sampler: %s", reason)
                self._fast_refused = reason
            return None
        size = batch_size or self.config.batch_size
        if self._decoder is None or self._decoder.model is not self.model:
            self._decoder = FastDecoder(self.model, rows_hint=min(size, 16))
        else:
            self._decoder.refresh()  # the weights may have changed since the last rollout
        return DecodeSession(self._decoder, self.tokenizer, self.sampling_params(eval_mode), self.stop_tokens(),
                             size, pad_id(self.tokenizer))

    def save(self, directory: str | Path) -> Path:
        """Write merged weights, tokenizer and chat template so ``from_pretrained(directory)`` loads them."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        model = merged_copy(self.model)
        model.generation_config.eos_token_id = self.tokenizer.eos_token_id
        model.generation_config.pad_token_id = self.tokenizer.pad_token_id
        model.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
        log.info("saved policy to %s", directory)
        return directory
