"""LoRA adapters with peft: train low-rank updates instead of all weights (paper: r=64, α=64, all linear)."""

from __future__ import annotations

import copy
import logging

from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model

from deltabelief.config import LoraConfig

log = logging.getLogger(__name__)


def target_modules(spec: str | list[str]) -> str | list[str]:
    """'all-linear' stays as is (peft picks every linear layer but the output head);
    'q_proj,v_proj' or a list becomes a list of module names."""
    if isinstance(spec, list):
        names = [s.strip() for s in spec if s.strip()]
    elif spec.strip() == "all-linear":
        return "all-linear"
    else:
        names = [s.strip() for s in spec.split(",") if s.strip()]
    if not names:
        raise ValueError(f"lora.target_modules is empty ({spec!r}); use 'all-linear' or module names")
    return names


def apply_lora(model, config: LoraConfig):
    """Wrap ``model`` with LoRA adapters; only adapter weights stay trainable.

    Returns ``model`` unchanged when ``config.enabled`` is false.
    """
    if not config.enabled:
        return model
    if isinstance(model, PeftModel):
        raise ValueError("the model already has adapters; apply_lora expects a plain transformers model")
    peft_config = PeftLoraConfig(
        r=config.r,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=target_modules(config.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    wrapped = get_peft_model(model, peft_config)
    trainable = sum(p.numel() for p in wrapped.parameters() if p.requires_grad)
    total = sum(p.numel() for p in wrapped.parameters())
    log.info("LoRA r=%d alpha=%d: %d of %d parameters trainable", config.r, config.alpha, trainable, total)
    return wrapped


def merged_copy(model):
    """A plain transformers model with the adapters merged in; ``model`` itself is untouched.

    Copies the model (memory: one more model) so training can continue on the adapters.
    """
    if not isinstance(model, PeftModel):
        return model
    return copy.deepcopy(model).merge_and_unload()
