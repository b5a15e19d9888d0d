"""One resource profile per role, declared once (requests = limits unless noted)."""

from __future__ import annotations

import os

from flytekit import Resources

from deltabelief.config import ClusterConfig, load_config

# Data synthesis, contracts, registry calls: light CPU work.
LIGHT = Resources(cpu="1", mem="2Gi")
# Single-machine model work on the CPU (warm start, calibration, evaluation, the torch trainer).
CPU_MODEL = Resources(cpu="2", mem="12Gi")
# Ray head of the GPU training job (drives verl's trainer; no GPU of its own).
RAY_HEAD = Resources(cpu="8", mem="64Gi")
# One GPU worker node of the verl job; its GPU count comes from the preset's cluster section.
GPU_WORKER_MEM = "400Gi"
GPU_WORKER_CPU = "32"

GPU_PRESET_ENV = "DELTABELIEF_GPU_PRESET"
"""Names the preset whose ``cluster`` section sizes the GPU training job when its task is registered."""


def gpu_cluster() -> ClusterConfig:
    """The GPU job's shape: the ``cluster`` section of ``$DELTABELIEF_GPU_PRESET``, else the defaults
    (which every shipped preset keeps), so that importing the tasks reads no preset unless asked to."""
    preset = os.environ.get(GPU_PRESET_ENV)
    return load_config(preset).cluster if preset else ClusterConfig()


def gpu_head(cluster: ClusterConfig) -> Resources:
    """The GPU task's own pod: the Ray head's CPU and memory, with the GPUs of one node."""
    return Resources(cpu=RAY_HEAD.cpu, mem=RAY_HEAD.mem, gpu=str(cluster.gpus_per_node))


def gpu_worker(cluster: ClusterConfig) -> Resources:
    return Resources(cpu=GPU_WORKER_CPU, mem=GPU_WORKER_MEM, gpu=str(cluster.gpus_per_node))
