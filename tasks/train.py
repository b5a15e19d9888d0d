"""Stage 5: RL training as a Ray job.

``train`` runs the single-machine trainer (``train.backend: torch``) on the Ray that the
Flyte Ray plugin starts (locally: a Ray on this machine). ``train_gpu`` is the same stage
on a KubeRay cluster and runs verl when the config says ``train.backend: verl``; its decorator
carries the default cluster shape, and the GPU pipeline resizes it at launch from the preset's
``cluster`` section (:func:`tasks.resources.gpu_stage_sizes`).
"""

from __future__ import annotations

import flytekit
from flytekit import task
from flytekit.extras.accelerators import GPUAccelerator
from flytekit.types.directory import FlyteDirectory
from flytekit.types.file import FlyteFile
from flytekitplugins.ray import HeadNodeConfig, RayJobConfig, WorkerNodeConfig

from deltabelief.config import ClusterConfig, Config
from deltabelief.pipeline import RunContext, train_stage, train_stage_with_threads
from deltabelief.shared_storage import shared_run_dir, stage_run
from images import cpu_image, gpu_image
from tasks.calibrate import Calibration
from tasks.common import scratch
from tasks.resources import CPU_MODEL, gpu_head, gpu_ray_config

DEFAULT_CLUSTER = ClusterConfig()


CPU_RAY = RayJobConfig(
    head_node_config=HeadNodeConfig(requests=CPU_MODEL, limits=CPU_MODEL),
    worker_node_config=[WorkerNodeConfig(group_name="cpu", replicas=1, requests=CPU_MODEL, limits=CPU_MODEL)],
    shutdown_after_job_finishes=True,
)


def largest_node_cpus() -> int:
    """CPUs of the largest live Ray node (the CPU trainer takes a whole node)."""
    import ray

    return max(int(node["Resources"].get("CPU", 1)) for node in ray.nodes() if node["Alive"])


def _train_on_ray(config: Config, model: FlyteDirectory, targets: FlyteFile, calibration: Calibration,
                  run: RunContext, num_gpus: int) -> FlyteDirectory:
    import ray

    num_cpus = 1 if num_gpus else largest_node_cpus()  # a GPU task must fit beside the GPU, on any node
    remote = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus)(train_stage_with_threads)
    model_dir = ray.get(
        remote.remote(num_cpus, config, model.download(), targets.download(), calibration.template,
                      calibration.excluded_targets, scratch("rl"), run)
    )
    return FlyteDirectory(str(model_dir))


@task(task_config=CPU_RAY, container_image=cpu_image, requests=CPU_MODEL, limits=CPU_MODEL)
def train(config: Config, model: FlyteDirectory, targets: FlyteFile, calibration: Calibration,
          run: RunContext) -> FlyteDirectory:
    return _train_on_ray(config, model, targets, calibration, run, num_gpus=0)


@task(
    task_config=gpu_ray_config(DEFAULT_CLUSTER),
    container_image=gpu_image,
    requests=gpu_head(DEFAULT_CLUSTER),
    accelerator=GPUAccelerator(DEFAULT_CLUSTER.accelerator),
)
def train_gpu(config: Config, model: FlyteDirectory, targets: FlyteFile, calibration: Calibration,
              run: RunContext) -> FlyteDirectory:
    if config.train.backend == "verl":  # verl drives its own Ray actors from the head
        run_dir = shared_run_dir(flytekit.current_context().execution_id.name)  # fails before any work
        shared = stage_run(run_dir, model.download(), targets.download())
        return FlyteDirectory(str(train_stage(config, shared.model_dir, shared.targets, calibration.template,
                                              calibration.excluded_targets, shared.out_dir, run)))
    return _train_on_ray(config, model, targets, calibration, run, num_gpus=1)
