"""Start and stop a loopback ``mlflow server`` for tests (the ``mlflow_server`` fixture)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from deltabelief.serving.policy_server import stop_process

STARTUP_SECONDS = 600  # generous: on a busy machine the server takes minutes to import MLflow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def running_server(root: Path):
    """``mlflow server`` with a sqlite backend and artifacts under ``root``; yields its URI."""
    port = _free_port()
    mlflow = Path(sys.executable).with_name("mlflow")
    log = open(root / "server.log", "w")
    process = subprocess.Popen(
        [str(mlflow), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{root / 'server.db'}",
         "--artifacts-destination", str(root / "artifacts"), "--serve-artifacts"],
        # No job runner: the tests queue no server-side jobs, and it starts a second MLflow
        # process beside the server (slower to start and to stop on 2 cores).
        stdout=log, stderr=subprocess.STDOUT,
        env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {process.returncode}: {(root / 'server.log').read_text()}")
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass  # not listening yet
            if time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server not up after {STARTUP_SECONDS}s: {(root / 'server.log').read_text()}")
            time.sleep(0.5)
        yield uri
    finally:
        stop_process(process)
        log.close()
