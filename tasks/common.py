"""Shared wiring: scratch directories and the cache version of deterministic stages."""

from __future__ import annotations

from pathlib import Path

import flytekit
from flytekit import Cache

# Bump when the logic of a cached stage changes, so old results are not reused.
CACHE = Cache(version="2")  # 2: teacher schedule seeded apart from the splits; Datasets.report


def scratch(name: str) -> Path:
    """A fresh directory inside the task's working directory."""
    path = Path(flytekit.current_context().working_directory) / name
    path.mkdir(parents=True, exist_ok=True)
    return path
