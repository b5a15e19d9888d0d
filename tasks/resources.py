"""One resource profile per role, declared once (requests = limits unless noted).

The CPU pipeline's tasks carry their profiles in their decorators. The GPU pipeline sizes its
model stages when it is launched, from the preset it is given (:func:`gpu_stage_sizes`, applied
with ``with_overrides`` by a dynamic workflow), so no preset is read when the tasks are imported.
"""

from __future__ import annotations

from flytekit import Resources
from flytekit.extras.accelerators import GPUAccelerator
from flytekitplugins.ray import HeadNodeConfig, RayJobConfig, WorkerNodeConfig

from deltabelief.config import ClusterConfig, Config

# Data synthesis, contracts, registry calls: light CPU work.
LIGHT = Resources(cpu="1", mem="2Gi")
# Single-machine model work on the CPU (warm start, calibration, evaluation, the torch trainer).
CPU_MODEL = Resources(cpu="2", mem="12Gi")
# Ray head of the GPU training job (drives verl's trainer; no GPU of its own).
RAY_HEAD = Resources(cpu="8", mem="64Gi")
# One GPU worker node of the verl job; its GPU count comes from the preset's cluster section.
GPU_WORKER_MEM = "400Gi"
GPU_WORKER_CPU = "32"
# Per GPU of a single-node model stage (warm start, calibration, evaluation): host CPU and memory.
CPU_PER_GPU = 4
MEM_PER_GPU_GI = 48


def gpu_head(cluster: ClusterConfig) -> Resources:
    """The GPU task's own pod: the Ray head's CPU and memory, with the GPUs of one node."""
    return Resources(cpu=RAY_HEAD.cpu, mem=RAY_HEAD.mem, gpu=str(cluster.gpus_per_node))


def gpu_worker(cluster: ClusterConfig) -> Resources:
    return Resources(cpu=GPU_WORKER_CPU, mem=GPU_WORKER_MEM, gpu=str(cluster.gpus_per_node))


def gpu_pod(gpus: int) -> Resources:
    """A single-node model stage with ``gpus`` GPUs."""
    return Resources(cpu=str(CPU_PER_GPU * gpus), mem=f"{MEM_PER_GPU_GI * gpus}Gi", gpu=str(gpus))


def gpu_ray_config(cluster: ClusterConfig) -> RayJobConfig:
    """A head node and one GPU worker group with ``num_nodes`` replicas of ``gpus_per_node`` GPUs."""
    worker = gpu_worker(cluster)
    return RayJobConfig(
        head_node_config=HeadNodeConfig(requests=RAY_HEAD, limits=RAY_HEAD),
        worker_node_config=[
            WorkerNodeConfig(group_name="gpu", replicas=cluster.num_nodes, requests=worker, limits=worker)
        ],
        shutdown_after_job_finishes=True,
        ttl_seconds_after_finished=600,
    )


def gpu_stage_sizes(config: Config) -> dict[str, dict]:
    """``with_overrides`` arguments for each model stage of the GPU pipeline, from ``config``:
    the warm start on ``sft.processes`` GPUs (torchrun), calibration on one, evaluation and the
    warm-start comparison on the GPUs one vLLM server takes (``cluster.rollout_tensor_parallel``),
    training on a Ray cluster of ``cluster.num_nodes`` x ``cluster.gpus_per_node`` GPUs."""
    cluster = config.cluster
    accelerator = GPUAccelerator(cluster.accelerator)

    def on_gpus(gpus: int) -> dict:
        return {"requests": gpu_pod(gpus), "limits": gpu_pod(gpus), "accelerator": accelerator}

    serving = on_gpus(cluster.rollout_tensor_parallel)
    return {
        "warm_start": on_gpus(config.sft.processes),
        "calibrate": on_gpus(1),
        "evaluate": serving,
        "compare": serving,
        "train": {"task_config": gpu_ray_config(cluster), "requests": gpu_head(cluster), "limits": gpu_head(cluster),
                  "accelerator": accelerator},
    }
