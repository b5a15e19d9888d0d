"""What to tell a user who stopped training with Ctrl-C: the last checkpoint and the command that continues."""

from __future__ import annotations

import shlex
from pathlib import Path


def resume_command(argv: list[str]) -> str:
    """``deltabelief`` with the same arguments, plus ``--resume`` unless they already hold it."""
    return shlex.join(["deltabelief", *argv, *([] if "--resume" in argv else ["--resume"])])


def how_to_resume(out_dir: Path, argv: list[str]) -> str:
    """One line: where the newest complete checkpoint is (or that there is none) and how to go on."""
    from deltabelief.training.checkpoints import latest_checkpoint  # torch is loaded by now: training ran

    checkpoint = latest_checkpoint(Path(out_dir) / "checkpoints")
    if checkpoint is None:
        return f"interrupted before the first checkpoint under {out_dir}; start again with: {shlex.join(['deltabelief', *argv])}"
    return f"interrupted; last checkpoint: {checkpoint}; resume with: {resume_command(argv)}"
