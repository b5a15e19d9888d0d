"""Nightly retraining: what changes from night to night, derived from the schedule's kickoff time.

Each night continues from the registry's champion (see ``pipeline.starting_model_stage``), on
a fresh draw of training targets and with fresh seeds. Both come from the kickoff time, so a
night re-run for the same kickoff repeats itself and the next night differs. The evaluation
suite (data seed and split, eval seed) is left alone: every night is scored on the same
held-out targets, which is what lets the gate pair a candidate with the champion.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from pathlib import Path

from deltabelief.config import Config, override


def kickoff_label(kickoff_time: datetime) -> str:
    """The kickoff time in UTC, ISO 8601 to the second (a naive time is taken as UTC, as Flyte's is)."""
    if kickoff_time.tzinfo is None:
        kickoff_time = kickoff_time.replace(tzinfo=timezone.utc)
    return kickoff_time.astimezone(timezone.utc).isoformat(timespec="seconds")


def kickoff_seed(kickoff_time: datetime) -> int:
    """A 31-bit seed that is a function of the kickoff time only."""
    digest = hashlib.sha256(f"nightly/{kickoff_label(kickoff_time)}".encode()).digest()
    return int.from_bytes(digest[:4], "big") >> 1


def nightly_config(config: Config, kickoff_time: datetime) -> Config:
    """``config`` with the RL seed (rollouts and the order of training targets) from the kickoff."""
    return override(config, {"train.seed": kickoff_seed(kickoff_time)})


def draw_training_targets(targets_path: str | Path, count: int, seed: int, out_path: str | Path) -> Path:
    """A seeded draw of ``count`` targets of the train split (all when fewer), written as targets.parquet.

    Only train rows are drawn from, so the validation and test targets stay held out however
    many nights have run.
    """
    import pandas as pd

    from deltabelief.synthesis import write_parquet

    if count < 1:
        raise ValueError(f"the number of training targets to draw must be positive, got {count}")
    frame = pd.read_parquet(targets_path)
    train = frame[frame["split"] == "train"]
    if train.empty:
        raise ValueError(f"{targets_path} has no train targets to draw from (splits: {sorted(frame['split'].unique())})")
    drawn = train.sample(n=min(count, len(train)), random_state=seed).sort_index()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    write_parquet(drawn, out_path, "targets")
    return out_path


def weights_digest(model_dir: str | Path) -> str:
    """A short hash of a checkpoint's tensors (names, dtypes, values), whatever files hold them:
    two directories with this digest hold the same weights."""
    import torch
    from safetensors import safe_open

    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors weights in {model_dir}")
    tensors = {}
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():
                tensors[name] = handle.get_tensor(name)
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(-1).view(dtype=torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:12]
