"""A run directory knows which run it belongs to, so two runs never share one.

``<out>/run.json`` records the run's identity: a hash of the config that decides
what a step computes (:data:`IDENTITY_SECTIONS`, without the keys that only say
how long to run or how much to keep, :data:`NOT_IDENTITY`, so a run can be
extended with ``--resume --set train.num_steps=N``), the starting model and the
targets (fingerprint and count). :func:`claim_run_dir` refuses to start a run in
a directory that holds another one, and ``--resume`` of a run whose identity
differs; every checkpoint carries the identity too (``TrainerState.extra["run"]``).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from deltabelief.config import Config, config_to_dict, flatten

log = logging.getLogger(__name__)


class RunDirError(ValueError):
    """A run directory, or a checkpoint in it, belongs to another run."""


RUN_FILE = "run.json"
RUN_ARTIFACTS = ("checkpoints", "model", "metrics.jsonl")
"""What a run writes besides run.json; finding one of them without run.json means an unknown run."""
IDENTITY_SECTIONS = ("policy", "game", "judge", "belief", "reward", "estimator", "ppo", "optim", "train")
NOT_IDENTITY = frozenset(
    {"train.num_steps", "train.checkpoint_every", "train.keep_checkpoints", "train.num_logged_samples"}
)


def run_identity(config: Config, targets_fingerprint: str, num_targets: int) -> dict[str, Any]:
    """What makes two runs the same run: the step-defining config, the starting model and the targets."""
    values = config_to_dict(config)
    defining = {k: v for k, v in flatten({s: values[s] for s in IDENTITY_SECTIONS}).items() if k not in NOT_IDENTITY}
    model = config.policy.model
    if Path(model).exists():  # the same model directory however it was spelled
        model = str(Path(model).resolve())
    return {
        "config_hash": hashlib.sha256(json.dumps(defining, sort_keys=True).encode()).hexdigest()[:12],
        "model": model,
        "targets": targets_fingerprint,
        "num_targets": num_targets,
    }


def identity_differences(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """One phrase per differing field, e.g. ``model was 'a', now 'b'``."""
    return [f"{key} was {recorded.get(key)!r}, now {current[key]!r}" for key in current if recorded.get(key) != current[key]]


def claim_run_dir(out_dir: Path, identity: dict[str, Any], resume: bool) -> None:
    """Create ``out_dir`` for this run, or refuse (:class:`RunDirError`) when it holds another run.

    The same run may start over (no ``resume``) or continue (``resume``); a different
    run, or an unidentified one without ``resume``, is refused with what differs.
    """
    out_dir = Path(out_dir)
    run_file = out_dir / RUN_FILE
    if run_file.exists():
        recorded = json.loads(run_file.read_text())
        differences = identity_differences(recorded, identity)
        if differences and resume:
            raise RunDirError(f"{out_dir} belongs to another run ({'; '.join(differences)}): --resume continues only "
                             f"the run recorded in {run_file}. Choose a new --out for this one.")
        if differences:
            raise RunDirError(f"{out_dir} already holds another run ({'; '.join(differences)}; recorded in {run_file}). "
                             f"Choose a new --out, or delete {out_dir} to replace that run.")
        return
    found = [name for name in RUN_ARTIFACTS if (out_dir / name).exists()]
    if found and not resume:
        raise RunDirError(
            f"{out_dir} already holds {', '.join(found)} of a run that recorded no {RUN_FILE}; refusing to overwrite "
            f"it. Choose a new --out, pass --resume to continue that run, or delete {out_dir}."
        )
    if found:
        log.warning("%s: no %s; taking the run's identity from this --resume", out_dir, RUN_FILE)
    out_dir.mkdir(parents=True, exist_ok=True)
    run_file.write_text(json.dumps(identity, indent=1, sort_keys=True) + "\n")


def check_checkpoint_identity(path: Path, recorded: dict[str, Any] | None, identity: dict[str, Any]) -> None:
    """Refuse (:class:`RunDirError`) to resume from a checkpoint another run wrote."""
    if recorded is None:
        log.warning("%s records no run identity (written before checkpoints did); resuming from it", path)
        return
    differences = identity_differences(recorded, identity)
    if differences:
        raise RunDirError(f"{path} was written by another run ({'; '.join(differences)}); --resume refuses it")
