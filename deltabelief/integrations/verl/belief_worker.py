"""verl's actor worker with one more method: the packed belief pass (:mod:`.packed_belief`).

:class:`DeltaBeliefActorRolloutRefWorker` is verl 0.9.1's ``engine_workers.ActorRolloutRefWorker``
(the worker ``BaseTaskRunner.add_actor_rollout_worker`` puts on the GPUs; our task runner swaps
in this subclass) plus :meth:`~DeltaBeliefActorRolloutRefWorker.compute_packed_beliefs`,
registered with the dispatch mode of ``compute_log_prob``
(``make_nd_compute_dataproto_dispatch_fn(mesh_name="actor")``): the driver's DataProto is split
evenly over the actor's data-parallel ranks and the ranks' outputs are concatenated in order.

Each rank runs the actor's own module (FSDP, LoRA if any, the current weights) on its rows under
the engine's eval mode (which loads offloaded parameters) and its autocast dtype, with the packed
4-D mask. Attention backend: verl loads the actor with ``flash_attention_2`` and, with remove-
padding, feeds flash-attention's varlen kernel, which can express separate sequences but not
"suffix_t sees h_t": a prefix shared by N+1 segments needs a mask. So for this pass only, the
model's attention implementation is switched to ``sdpa`` (on GPU torch then uses its memory-
efficient kernel, which takes an additive mask and does not materialise the L×L scores) and
switched back afterwards. HF's flash path must not see the packed row at all: it would read the
position ids (which restart at e_t for each suffix) as sequence boundaries.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Iterator

import torch
from transformers import PreTrainedModel
from verl.protocol import DataProto
from verl.single_controller.base.decorator import make_nd_compute_dataproto_dispatch_fn, register
from verl.utils.device import get_device_name
from verl.workers.engine_workers import ActorRolloutRefWorker

from deltabelief.integrations.verl.packed_belief import score_payload

MASKED_ATTENTION = ("sdpa", "eager")
"""HF attention implementations that honour a 4-D attention mask."""


def hf_model(module: torch.nn.Module) -> PreTrainedModel:
    """The outermost transformers model inside ``module`` (under FSDP1 or peft wrappers)."""
    for sub in module.modules():  # pre-order: the outermost first
        if isinstance(sub, PreTrainedModel):
            return sub
    raise TypeError(f"{type(module).__name__} holds no transformers PreTrainedModel")


@contextmanager
def masked_attention(module: torch.nn.Module, implementation: str = "sdpa") -> Iterator[None]:
    """Run ``module`` with an attention implementation that takes 4-D masks, then restore its own.

    HF attention layers read ``config._attn_implementation`` at every forward, so the switch is
    a config change (``set_attn_implementation``), no reload; a model already on sdpa or eager
    keeps its implementation.
    """
    if implementation not in MASKED_ATTENTION:
        raise ValueError(f"attention implementation {implementation!r} takes no 4-D mask; "
                         f"use one of {MASKED_ATTENTION}")
    model = hf_model(module)
    previous = model.config._attn_implementation
    if previous in MASKED_ATTENTION:
        yield
        return
    model.set_attn_implementation(implementation)
    try:
        yield
    finally:
        model.set_attn_implementation(previous)


def check_packed_belief_engine(engine_config) -> None:
    """Refuse engine settings under which the packed pass would be wrong."""
    if getattr(engine_config, "ulysses_sequence_parallel_size", 1) > 1:
        raise ValueError("cluster.belief_layout=packed needs ulysses_sequence_parallel_size=1: a packed row's "
                         "4-D mask cannot be split over sequence-parallel ranks; use belief_layout=per_prefix")
    if getattr(engine_config, "use_fused_kernels", False):
        raise ValueError("cluster.belief_layout=packed needs the model's logits (use_fused_kernels=false); "
                         "use belief_layout=per_prefix")


def engine_autocast(engine):
    """The autocast the engine's own forward uses (none when it computes in fp32)."""
    dtype = getattr(engine, "_autocast_dtype", torch.bfloat16)  # the FSDP engine's mixed-precision param dtype
    return nullcontext() if dtype == torch.float32 else torch.autocast(device_type=get_device_name(), dtype=dtype)


class DeltaBeliefActorRolloutRefWorker(ActorRolloutRefWorker):
    """verl's actor/rollout/ref worker plus :meth:`compute_packed_beliefs`."""

    @register(dispatch_mode=make_nd_compute_dataproto_dispatch_fn(mesh_name="actor"))
    def compute_packed_beliefs(self, data: DataProto) -> DataProto:
        """log b_0..log b_N of this rank's payload rows (:func:`.packed_belief.score_payload`)."""
        engine = self.actor.engine
        check_packed_belief_engine(engine.engine_config)
        mask_dtype = getattr(engine, "_autocast_dtype", torch.bfloat16)
        with engine.eval_mode(), torch.no_grad(), masked_attention(engine.module), engine_autocast(engine):
            return score_payload(engine.module, data, mask_dtype=mask_dtype)
