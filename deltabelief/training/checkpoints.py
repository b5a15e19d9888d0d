"""Checkpoints that let a run continue exactly where it stopped.

A checkpoint is a directory ``<root>/step_000005/`` holding:

- ``model/``: the trainable weights in safetensors: the LoRA adapter when the model
  is a peft model, else the whole model (``save_pretrained``) plus the tokenizer;
- ``trainer_state.pt``: optimizer and scheduler state, the RNG states of
  ``random``, ``numpy`` and ``torch``, the step count and the data-order state;
- ``COMPLETE``: written last, so a run killed mid-save leaves no half checkpoint
  that :func:`latest_checkpoint` would pick.

A checkpoint marked complete whose files cannot be read (a disk fault, a file
truncated by hand) raises :class:`CorruptCheckpointError` naming the file;
:func:`load_latest_checkpoint` then falls back to the previous one, with a warning.

Weights are restored bit for bit (safetensors keeps the dtype), so a resumed run
continues with the same parameters, optimizer moments, learning rate, RNG draws
and data order as an uninterrupted one.
"""

from __future__ import annotations

import logging
import random
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

log = logging.getLogger(__name__)

STEP_DIR = re.compile(r"^step_(\d+)$")
STATE_FILE = "trainer_state.pt"
COMPLETE_FILE = "COMPLETE"


class CorruptCheckpointError(RuntimeError):
    """A checkpoint marked complete has a file that cannot be read."""


@dataclass
class TrainerState:
    """Everything besides the weights that a resumed run needs."""

    step: int
    """Completed RL steps (the next step to run is ``step + 1``)."""
    data_order: dict[str, Any] = field(default_factory=dict)
    """What the per-step target order depends on (seed, number and fingerprint of targets)."""
    rng: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


def is_peft_model(model) -> bool:
    return hasattr(model, "peft_config")


def capture_rng() -> dict[str, Any]:
    """The global RNG states (python, numpy, torch CPU, and CUDA when present)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def step_dir(root: Path, step: int) -> Path:
    return Path(root) / f"step_{step:06d}"


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found) if (p / COMPLETE_FILE).exists()]


def latest_checkpoint(root: Path) -> Path | None:
    """The newest complete checkpoint under ``root``, or None."""
    found = list_checkpoints(root)
    return found[-1] if found else None


def save_model_weights(model, tokenizer, directory: Path) -> None:
    """The trainable weights: a peft adapter, or the full model and its tokenizer."""
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    if tokenizer is not None and not is_peft_model(model):
        tokenizer.save_pretrained(directory)


def load_model_weights(model, directory: Path) -> None:
    """Load weights saved by :func:`save_model_weights` into ``model`` in place (exact values)."""
    files = sorted(Path(directory).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors weights in {directory}")
    weights: dict[str, torch.Tensor] = {}
    for path in files:
        weights.update(load_file(str(path)))
    apply_model_weights(model, weights, directory)


def apply_model_weights(model, weights: dict[str, torch.Tensor], directory: Path) -> None:
    """Copy ``weights`` (read from ``directory``, named in errors) into ``model`` in place."""
    if is_peft_model(model):
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(model, weights)
        if result.unexpected_keys:
            raise ValueError(f"{directory}: adapter keys the model lacks: {result.unexpected_keys[:5]}")
        return
    result = model.load_state_dict(weights, strict=False)
    tied = {"lm_head.weight"} if getattr(model.config, "tie_word_embeddings", False) else set()
    missing = set(result.missing_keys) - tied
    if missing or result.unexpected_keys:
        raise ValueError(
            f"{directory}: weights do not fit the model; missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(result.unexpected_keys)[:5]}"
        )


def save_checkpoint(
    root: Path, state: TrainerState, *, model, tokenizer, optimizer, scheduler, keep_last: int = 0
) -> Path:
    """Write ``<root>/step_<state.step>/`` atomically; keep only the newest ``keep_last`` (0: all)."""
    final = step_dir(root, state.step)
    tmp = final.with_name(final.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    save_model_weights(model, tokenizer, tmp / "model")
    torch.save(
        {
            "step": state.step,
            "data_order": state.data_order,
            "rng": state.rng or capture_rng(),
            "extra": state.extra,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
        },
        tmp / STATE_FILE,
    )
    (tmp / COMPLETE_FILE).write_text(f"{state.step}\n")
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    if keep_last > 0:
        for old in list_checkpoints(root)[:-keep_last]:
            shutil.rmtree(old)
    log.info("saved checkpoint %s", final)
    return final


def _read(path: Path, read):
    """``read(path)``, with any failure turned into a CorruptCheckpointError naming the file."""
    try:
        return read(path)
    except Exception as err:  # a truncated zip, a bad pickle, a safetensors header, an I/O error: all one verdict
        raise CorruptCheckpointError(f"{path} cannot be read ({type(err).__name__}: {err})") from err


def load_checkpoint(path: Path, *, model, optimizer=None, scheduler=None) -> TrainerState:
    """Restore weights, optimizer and scheduler in place; return the rest (RNG is not applied here).

    Every file is read before anything is restored, so a :class:`CorruptCheckpointError` leaves
    the model and optimizer as they were.
    """
    path = Path(path)
    if not (path / COMPLETE_FILE).exists():
        raise FileNotFoundError(f"{path} is not a complete checkpoint (no {COMPLETE_FILE} marker)")
    blob = _read(path / STATE_FILE, lambda p: torch.load(p, map_location="cpu", weights_only=False))
    weight_files = sorted((path / "model").glob("*.safetensors"))
    if not weight_files:
        raise CorruptCheckpointError(f"{path / 'model'} holds no *.safetensors weights")
    weights: dict[str, torch.Tensor] = {}
    for file in weight_files:
        weights.update(_read(file, lambda p: load_file(str(p))))
    apply_model_weights(model, weights, path / "model")
    if optimizer is not None:
        optimizer.load_state_dict(blob["optimizer"])
    if scheduler is not None:
        if blob["scheduler"] is None:
            raise ValueError(f"{path}: checkpoint has no scheduler state but the run has a scheduler")
        scheduler.load_state_dict(blob["scheduler"])
    return TrainerState(step=blob["step"], data_order=blob["data_order"], rng=blob["rng"], extra=blob["extra"])


def load_latest_checkpoint(root: Path, *, model, optimizer=None, scheduler=None) -> tuple[Path, TrainerState] | None:
    """Load the newest complete checkpoint under ``root`` that can be read, or None when there is none.

    A corrupt one is skipped with a warning naming its bad file; when all are corrupt the
    error lists every bad file.
    """
    bad: list[str] = []
    for path in reversed(list_checkpoints(root)):
        try:
            return path, load_checkpoint(path, model=model, optimizer=optimizer, scheduler=scheduler)
        except CorruptCheckpointError as err:
            log.warning("skipping checkpoint %s: %s; trying the one before it", path.name, err)
            bad.append(str(err))
    if bad:
        raise CorruptCheckpointError(f"no checkpoint under {root} can be read: {'; '.join(bad)}")
    return None
