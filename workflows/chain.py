"""The pipeline's stage order, written once.

Workflows call these functions while Flyte compiles them; each lays out its stages as nodes of
the calling workflow and returns their outputs. The CPU and GPU pipelines differ only in the
:class:`ModelStages` they pass (the tasks that run a model, and how each is sized), so their
stage order cannot drift apart. The GPU pipeline lays the chain out in a dynamic workflow
(:func:`gpu_chain`), once its preset is known, so every model stage is sized from that preset.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

from flytekit import dynamic
from flytekit.core.base_task import PythonTask
from flytekit.core.promise import Promise

from deltabelief.config import Config
from images import cpu_image
from tasks.calibrate import calibrate, calibrate_gpu
from tasks.compare import compare_to_warm_start, compare_to_warm_start_gpu
from tasks.evaluate import evaluate, evaluate_gpu
from tasks.registry import promote, register
from tasks.resources import LIGHT, gpu_stage_sizes
from tasks.setup import finish_run, resolve_config, start_run
from tasks.synthesize import synthesize
from tasks.train import train, train_gpu
from tasks.validate import validate
from tasks.warm_start import warm_start, warm_start_gpu


@dataclass(frozen=True)
class ModelStages:
    """The tasks of the stages that run a model, and ``with_overrides`` arguments per stage name."""

    warm_start: PythonTask
    calibrate: PythonTask
    train: PythonTask
    evaluate: PythonTask
    compare: PythonTask
    sizes: dict = field(default_factory=dict)

    def sized(self, stage: str, output: Promise) -> Promise:
        """``output``'s node with this stage's size, if one is given."""
        return output.with_overrides(**self.sizes[stage]) if stage in self.sizes else output


CPU_STAGES = ModelStages(warm_start, calibrate, train, evaluate, compare_to_warm_start)


def gpu_stages(config: Config) -> ModelStages:
    """The GPU tasks, each sized from ``config`` (:func:`tasks.resources.gpu_stage_sizes`)."""
    return ModelStages(warm_start_gpu, calibrate_gpu, train_gpu, evaluate_gpu, compare_to_warm_start_gpu,
                       sizes=gpu_stage_sizes(config))


def register_and_promote(cfg: Promise, model: Promise, summary: Promise, run: Promise) -> Promise:
    """register (alias 'challenger') -> promote (the gate against the champion); returns the decision."""
    version = register(config=cfg, model=model, summary=summary, run=run)
    return promote(config=cfg, version=version, summary=summary, run=run)


def train_and_gate(cfg: Promise, run: Promise, datasets: Promise, start: Promise, targets: Promise,
                   stages: ModelStages = CPU_STAGES) -> tuple[Promise, Promise]:
    """calibrate -> train -> evaluate -> register -> promote; returns (summary, decision)."""
    calibration = stages.sized("calibrate", stages.calibrate(config=cfg, model=start, datasets=datasets, run=run))
    model = stages.sized("train", stages.train(config=cfg, model=start, targets=targets, calibration=calibration,
                                               run=run))
    summary = stages.sized("evaluate", stages.evaluate(config=cfg, model=model, run=run))
    return summary, register_and_promote(cfg, model, summary, run)


def model_chain(cfg: Config | Promise, stages: ModelStages) -> Promise:
    """synthesize -> validate -> warm_start -> :func:`train_and_gate` (and the warm start evaluated
    for the paired gain) -> finish, for a resolved config; returns the promotion decision."""
    run = start_run(config=cfg)
    datasets = validate(datasets=synthesize(config=cfg), run=run)
    sft_model = stages.sized("warm_start", stages.warm_start(config=cfg, datasets=datasets, run=run))
    summary, decision = train_and_gate(cfg, run, datasets, sft_model, datasets.targets, stages)
    gain = stages.sized("compare", stages.compare(config=cfg, baseline=sft_model, summary=summary, run=run))
    gain >> finish_run(run=run, decision=decision)
    return decision


def delta_belief_chain(config: str, estimator: str, num_steps: int, overrides: List[str],
                       stages: ModelStages = CPU_STAGES) -> Promise:
    """:func:`model_chain` for the preset and overrides given."""
    cfg = resolve_config(config=config, estimator=estimator, num_steps=num_steps, overrides=overrides)
    return model_chain(cfg, stages)


@dynamic(container_image=cpu_image, requests=LIGHT, limits=LIGHT)
def gpu_chain(cfg: Config) -> dict:
    """The chain on GPUs, laid out when the preset is known: the warm start on ``sft.processes``
    GPUs, calibration on one, training on ``cluster.num_nodes`` x ``cluster.gpus_per_node``,
    evaluation beside a vLLM server on ``cluster.rollout_tensor_parallel`` GPUs."""
    return model_chain(cfg, gpu_stages(cfg))
