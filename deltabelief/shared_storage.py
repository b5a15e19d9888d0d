"""The volume every pod of a GPU training job mounts at the same path (``DELTABELIEF_SHARED_DIR``).

On a Ray cluster the head pod and the GPU worker pods are different machines: verl's workers load
the model, read ``agent_loops.yaml`` and the datasets, and write checkpoints, all by path. Those
paths must therefore lie on one ReadWriteMany volume (docs/cluster.md, "Shared storage"). This
module finds that volume, copies a run's inputs onto it and refuses paths that are not on it.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

SHARED_DIR_ENV = "DELTABELIEF_SHARED_DIR"


class SharedStorageError(RuntimeError):
    """The shared volume is missing, or a path a GPU worker needs is not on it."""


def shared_root() -> Path:
    """The mounted shared volume, checked to exist; a clear error when the variable is unset."""
    root = os.environ.get(SHARED_DIR_ENV, "")
    if not root:
        raise SharedStorageError(
            f"train.backend=verl needs ${SHARED_DIR_ENV}: the mount path of a ReadWriteMany volume mounted "
            "at the same path in the Ray head and every GPU worker pod (docs/cluster.md, 'Shared storage')")
    path = Path(root)
    if not path.is_dir():
        raise SharedStorageError(f"${SHARED_DIR_ENV}={root} is not a directory (is the shared volume mounted?)")
    return path.resolve()


def is_local_path(value: str | Path) -> bool:
    """A filesystem path rather than a Hugging Face hub id ('Qwen/Qwen3-1.7B')."""
    text = str(value)
    return os.path.isabs(text) or text.startswith(".") or Path(text).exists()


def require_on_shared_storage(paths: dict[str, str | Path]) -> Path:
    """Raise naming every path (``{what: path}``) that is not under the shared volume; returns the root."""
    root = shared_root()
    outside = {what: str(p) for what, p in paths.items() if not Path(p).resolve().is_relative_to(root)}
    if outside:
        listed = ", ".join(f"{what}={p}" for what, p in outside.items())
        raise SharedStorageError(f"GPU workers cannot reach {listed}: not under ${SHARED_DIR_ENV}={root}")
    return root


@dataclass(frozen=True)
class SharedRun:
    """A run's inputs and output directory on the shared volume."""

    model_dir: Path
    targets: Path
    out_dir: Path


def shared_run_dir(run_name: str) -> Path:
    """``<shared>/<run_name>``, created; fails before any work when the volume is not configured."""
    if not run_name or "/" in run_name or run_name in (".", ".."):
        raise ValueError(f"run_name must be one path component, got {run_name!r}")
    path = shared_root() / run_name
    path.mkdir(parents=True, exist_ok=True)
    return path


def stage_run(run_dir: Path, model_dir: str | Path, targets: str | Path) -> SharedRun:
    """Copy the warm-start model and the targets into ``run_dir`` (on the shared volume)."""
    require_on_shared_storage({"run directory": run_dir})
    model = run_dir / "model"
    shutil.copytree(model_dir, model, dirs_exist_ok=True)
    staged_targets = run_dir / "data" / Path(targets).name
    staged_targets.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(targets, staged_targets)
    out = run_dir / "rl"
    out.mkdir(exist_ok=True)
    return SharedRun(model_dir=model, targets=staged_targets, out_dir=out)
