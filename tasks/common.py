"""Shared wiring: scratch directories and the cache version of deterministic stages."""

from __future__ import annotations

import uuid
from pathlib import Path

import flytekit
from flytekit import Cache
from flytekit.configuration import LocalConfig
from flytekit.core.context_manager import FlyteContextManager

# Bump when the logic of a cached stage changes, so old results are not reused.
CACHE = Cache(version="3")  # 3: local results in LOCAL_CACHED_FILES (entries of 2 may name deleted /tmp files)


# Beside Flyte's local cache (~/.flyte/local-cache), so the files of a cached local result live
# as long as the entry that names them. `pyflyte local-cache clear` leaves them: delete this too.
LOCAL_CACHED_FILES = Path("~/.flyte/deltabelief-cached-files").expanduser()


def cached_outputs(name: str) -> Path:
    """A fresh directory for the files a cached task returns.

    On a cluster that is the task's working directory: Flyte uploads the files it returns. A
    local execution returns their local paths as they are, and its cache outlives the temporary
    working directory: after /tmp is cleaned a cache hit would name files that are gone, and the
    next task would fail on its inputs. Locally, when the local cache is on, they go under
    ``LOCAL_CACHED_FILES`` instead.
    """
    state = FlyteContextManager.current_context().execution_state
    if state is None or not state.is_local_execution() or not LocalConfig.auto().cache_enabled:
        return scratch(name)  # with no local cache nothing outlives the run
    path = LOCAL_CACHED_FILES / uuid.uuid4().hex / name
    path.mkdir(parents=True)
    return path


def scratch(name: str) -> Path:
    """A fresh directory inside the task's working directory."""
    path = Path(flytekit.current_context().working_directory) / name
    path.mkdir(parents=True, exist_ok=True)
    return path
