"""The GPU pipeline sizes each model stage from the preset it is launched with.

`delta_belief_pipeline_gpu` lays its chain out in a dynamic workflow once the preset is known; here
that dynamic is compiled as Flyte compiles it at run time (no cluster), for both paper presets and
for a changed cluster, and the nodes' resources and the training job's Ray cluster are read back.
"""

from __future__ import annotations

from flytekit.configuration import Image, ImageConfig, SerializationSettings
from flytekit.core.context_manager import ExecutionState, FlyteContextManager

from flytekit.models.task import Resources as ResourceModel

from deltabelief.config import load_config
from workflows.chain import gpu_chain

SETTINGS = SerializationSettings(project="p", domain="d", version="v", env={},
                                 image_config=ImageConfig(default_image=Image(name="default", fqn="img", tag="t")))


_NAMES = {ResourceModel.ResourceName.CPU: "cpu", ResourceModel.ResourceName.GPU: "gpu",
          ResourceModel.ResourceName.MEMORY: "mem"}


def compiled_shape(cfg) -> tuple[dict[str, dict[str, str]], dict]:
    """({task name: requested resources}, the training task's Ray cluster) of the dynamic chain for ``cfg``."""
    gpu_chain._wf = None  # flytekit compiles a dynamic once per process (a pod runs one execution); here: several
    ctx = FlyteContextManager.current_context().with_serialization_settings(SETTINGS)
    with FlyteContextManager.with_context(ctx) as ctx:
        ctx = ctx.with_execution_state(ctx.execution_state.with_params(mode=ExecutionState.Mode.TASK_EXECUTION))
        with FlyteContextManager.with_context(ctx) as ctx:
            spec = gpu_chain.compile_into_workflow(ctx, gpu_chain._task_function, cfg=cfg)
    requests = {}
    for node in spec.nodes:
        overrides = node.task_node.overrides if node.task_node else None
        if overrides is not None and overrides.resources is not None:
            name = node.task_node.reference_id.name.rsplit(".", 1)[-1]
            requests[name] = {_NAMES.get(r.name, r.name): r.value for r in overrides.resources.requests}
            requests[name]["accelerator"] = overrides.extended_resources.gpu_accelerator.device
    (train,) = [t for t in spec.tasks if t.id.name.endswith("train_gpu")]
    return requests, train.custom["rayCluster"]


def test_each_gpu_stage_is_sized_from_the_paper_preset():
    cfg = load_config("qwen3-1.7b")  # both paper presets keep the cluster defaults; the next test changes them
    requests, ray = compiled_shape(cfg)
    assert set(requests) == {"warm_start_gpu", "calibrate_gpu", "train_gpu", "evaluate_gpu", "compare_to_warm_start_gpu"}
    assert requests["warm_start_gpu"]["gpu"] == str(cfg.sft.processes) == "8"
    assert requests["calibrate_gpu"]["gpu"] == "1"
    assert requests["evaluate_gpu"]["gpu"] == requests["compare_to_warm_start_gpu"]["gpu"] == str(cfg.cluster.rollout_tensor_parallel)
    assert requests["train_gpu"]["gpu"] == str(cfg.cluster.gpus_per_node)
    assert {r["accelerator"] for r in requests.values()} == {cfg.cluster.accelerator}
    (workers,) = ray["workerGroupSpec"]
    assert workers["replicas"] == cfg.cluster.num_nodes
    container = workers["k8sPod"]["podSpec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == str(cfg.cluster.gpus_per_node)


def test_the_shape_follows_the_preset_given_at_launch():
    cfg = load_config("qwen3-4b", ["cluster.num_nodes=3", "cluster.gpus_per_node=4", "cluster.accelerator=nvidia-a100",
                                   "cluster.rollout_tensor_parallel=2", "sft.processes=4"])
    requests, ray = compiled_shape(cfg)
    assert requests["warm_start_gpu"]["gpu"] == "4"
    assert requests["evaluate_gpu"]["gpu"] == "2"
    assert requests["train_gpu"]["gpu"] == "4"
    assert {r["accelerator"] for r in requests.values()} == {"nvidia-a100"}
    assert ray["workerGroupSpec"][0]["replicas"] == 3
    assert ray["workerGroupSpec"][0]["k8sPod"]["podSpec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "4"
