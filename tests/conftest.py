"""Shared test setup: offline, no telemetry, no Flyte cache, temporary files in a scratch dir.

The environment is set at import, before any test module imports transformers, mlflow
or flytekit. Keep this file small; add shared fixtures below.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
os.environ["FLYTE_LOCAL_CACHE_ENABLED"] = "false"
_SCRATCH = tempfile.mkdtemp(prefix="deltabelief-tests-")
# The paper presets name their files relative to the data root: here, the reference data.
os.environ.setdefault("DELTABELIEF_DATA_ROOT", str(__import__("anchor").ANCHOR_DATA))
os.environ["TMPDIR"] = _SCRATCH
tempfile.tempdir = _SCRATCH


def pytest_report_header(config):
    from anchor import ANCHOR_DATA

    state = "found" if ANCHOR_DATA.is_dir() else "MISSING: set DELTABELIEF_ANCHOR_DATA; the reference-data tests will fail"
    return f"reference data: {ANCHOR_DATA} ({state})"


import pytest  # noqa: E402  (after the environment above)


def pytest_unconfigure(config):
    """Empty the scratch dir: a run leaves about 1 GB of models and runs there. multiprocessing's
    own pymp-* dirs stay: it removes them at exit, after this hook, and fails on a missing one."""
    for entry in Path(_SCRATCH).iterdir():
        if entry.name.startswith("pymp-"):
            continue
        try:
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        except OSError as err:  # e.g. a socket a local Ray left behind: say so, do not fail a passed run
            warnings.warn(f"could not remove {entry} from the test scratch dir: {err}")


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real ``mlflow server`` on loopback with proxied artifact storage (``--serve-artifacts``),
    as a Flyte deployment whose pods share one tracking server uses it. Yields its URI; tests
    that share it use their own experiment or model names."""
    from mlflow_server import running_server

    with running_server(tmp_path_factory.mktemp("mlflow-server")) as uri:
        yield uri
