"""Evaluate a model through a server started for the occasion (the GPU pipeline's evaluation).

``eval.policy_server``: 'local' loads the weights in the evaluating process (the CPU pipeline);
'vllm' starts ``vllm serve`` on the pod's GPUs for the trained model and plays every game through
it (:mod:`deltabelief.policy.remote`); 'deltabelief' starts ``deltabelief serve`` instead, the
same protocol on the CPU (what the tests run). The server lives for one evaluation: it is
started on a free loopback port, waited for until ``GET /v1/models`` answers, and stopped
(SIGTERM, then SIGKILL) however the evaluation ends. A server that exits or does not come up
in time is an error that quotes the end of its log.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import requests

from deltabelief.config import Config

log = logging.getLogger(__name__)

SERVED_NAME = "policy"
"""The model name the launched vLLM server answers to."""
_LOG_TAIL_CHARS = 2000


class PolicyServerStartError(RuntimeError):
    """The policy server exited, or did not answer within its start-up time."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def server_command(config: Config, model_dir: str, port: int) -> tuple[list[str], str]:
    """``(argv, served model name)`` of the server ``config.eval.policy_server`` names."""
    kind = config.eval.policy_server
    if kind == "vllm":
        cluster = config.cluster
        return [
            "vllm", "serve", model_dir, "--served-model-name", SERVED_NAME, "--host", "127.0.0.1",
            "--port", str(port), "--tensor-parallel-size", str(cluster.rollout_tensor_parallel),
            "--gpu-memory-utilization", str(cluster.gpu_memory_utilization), "--enable-prefix-caching",
        ], SERVED_NAME
    if kind == "deltabelief":
        return [sys.executable, "-m", "deltabelief.cli", "serve", "--model", model_dir, "--port", str(port)], model_dir
    raise ValueError(f"eval.policy_server {kind!r} starts no server (use 'vllm' or 'deltabelief')")


def _log_tail(path: Path) -> str:
    text = path.read_text(errors="replace") if path.exists() else ""
    return text[-_LOG_TAIL_CHARS:].strip() or "(empty)"


@contextlib.contextmanager
def launched_server(argv: list[str], base_url: str, ready_timeout_s: float) -> Iterator[str]:
    """Run ``argv`` until the context ends; yields ``base_url`` once ``GET {base_url}/models`` answers 200."""
    log_file = Path(tempfile.mkstemp(prefix="policy-server-", suffix=".log")[1])
    with open(log_file, "w") as sink:
        process = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT, env=os.environ.copy())
    try:
        deadline = time.monotonic() + ready_timeout_s
        while True:
            if process.poll() is not None:
                raise PolicyServerStartError(f"policy server {argv[0]!r} exited with code {process.returncode} "
                                             f"before answering; its log ends:\n{_log_tail(log_file)}")
            try:
                if requests.get(f"{base_url}/models", timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                pass  # not listening yet
            if time.monotonic() > deadline:
                raise PolicyServerStartError(f"policy server {argv[0]!r} did not answer at {base_url} within "
                                             f"{ready_timeout_s:g} s (eval.policy_server_timeout_s); its log ends:\n"
                                             f"{_log_tail(log_file)}")
            time.sleep(0.5)
        log.info("policy server up at %s (%s)", base_url, " ".join(argv[:3]))
        yield base_url
    finally:
        stop_process(process)
        log_file.unlink(missing_ok=True)


def stop_process(process: subprocess.Popen, grace_s: float = 30.0) -> None:
    """SIGTERM, then SIGKILL if ``process`` has not exited within ``grace_s`` seconds."""
    process.terminate()
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def evaluate_through_server(config: Config, model_dir: str | Path, out_dir: str | Path, progress: bool = True):
    """:func:`~deltabelief.evaluation.run.evaluate_model` with ``model_dir`` served by
    ``config.eval.policy_server`` (its weights never load in this process)."""
    from deltabelief.evaluation.run import evaluate_model

    port = free_port()
    argv, served_name = server_command(config, str(model_dir), port)
    with launched_server(argv, f"http://127.0.0.1:{port}/v1", config.eval.policy_server_timeout_s) as url:
        policy = dataclasses.replace(config.policy, backend="openai", base_url=url, served_model=served_name,
                                     model=str(model_dir))  # model: where the tokenizer is read
        return evaluate_model(dataclasses.replace(config, policy=policy), out_dir, progress=progress)


def evaluate_saved_model(config: Config, model_dir: str | Path, out_dir: str | Path, progress: bool = True):
    """Evaluate the model saved in ``model_dir`` where ``config.eval.policy_server`` says it runs."""
    if config.eval.policy_server == "local":
        from deltabelief.evaluation.run import evaluate_model

        local = dataclasses.replace(config, policy=dataclasses.replace(config.policy, model=str(model_dir)))
        return evaluate_model(local, out_dir, progress=progress)
    return evaluate_through_server(config, model_dir, out_dir, progress=progress)
