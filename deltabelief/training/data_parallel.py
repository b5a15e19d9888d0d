"""Data parallelism for the SFT warm start: one process per device, weights replicated, gradients summed.

``torchrun`` starts the processes and sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the
rendezvous address; :meth:`DataParallel.from_environment` joins them (NCCL between GPUs, gloo
on the CPU). Every rank holds the whole model and the whole global batch, trains on its shard
of the batch, and before the optimizer step the gradients are summed over ranks, so every rank
takes the same step the single-process loop takes on the global batch.

Why not ``DistributedDataParallel`` or FSDP: both hook into the root module's ``forward``, and
our loss calls the decoder and the output head apart (logits only at trained positions); both
need every rank to run the same number of forwards, and a rank's shard packs into its own
number of micro-batches or prefix-tree rows; FSDP also needs tied embeddings (Qwen3-1.7B/4B
tie them) inside one shard unit. One summed all-reduce after local accumulation avoids all
three. The cost: weights, gradients and optimizer state are replicated on every GPU
(docs/cluster.md gives the sizes).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence, TypeVar

import torch
import torch.distributed as dist

from deltabelief.policy.loading import resolve_device

T = TypeVar("T")

BUCKET_ELEMENTS = 1 << 25
"""Gradient elements summed per all-reduce (128 MiB in float32): bounds the extra memory."""

LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DataParallel:
    """This process's place among the ranks; the default is a single process (no communication)."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @classmethod
    def from_environment(cls, device_setting: str = "auto") -> "DataParallel":
        """Join the process group torchrun set up; rank r uses GPU ``LOCAL_RANK`` of its node
        (``device_setting`` is ``policy.device``: 'cpu' runs every rank on the CPU with gloo)."""
        missing = [name for name in LAUNCH_VARIABLES if name not in os.environ]
        if missing:
            raise RuntimeError(f"{', '.join(missing)} not set: start this under torchrun "
                               "(torchrun --nproc-per-node N -m deltabelief.training.sft_distributed ...)")
        device = resolve_device(device_setting, int(os.environ["LOCAL_RANK"]))
        if device.type == "cuda":
            torch.cuda.set_device(device)
            dist.init_process_group("nccl", device_id=device)
        else:
            dist.init_process_group("gloo")
        return cls(dist.get_rank(), dist.get_world_size(), device)

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes the model, logs and metrics."""
        return self.rank == 0

    def shard(self, batch: Sequence[T]) -> list[T]:
        """This rank's contiguous share of ``batch`` (sizes differ by at most one; may be empty).
        Contiguous, so neighbours in token order stay together for prefix-tree packing."""
        base, extra = divmod(len(batch), self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return list(batch[start : start + base + (self.rank < extra)])

    def sum(self, values: Sequence[float]) -> list[float]:
        """Each value summed over ranks (float64)."""
        if self.world_size == 1:
            return [float(v) for v in values]
        tensor = torch.tensor(list(values), dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def require_same(self, what: str, value: int) -> None:
        """Raise on every rank unless all ranks hold the same ``value`` (e.g. the number of
        batches: ranks that disagree would otherwise wait on each other forever)."""
        if self.world_size == 1:
            return
        low_high = torch.tensor([value, -value], dtype=torch.float64, device=self.device)
        dist.all_reduce(low_high, op=dist.ReduceOp.MIN)
        low, high = low_high[0].item(), -low_high[1].item()
        if low != high:
            raise RuntimeError(f"ranks disagree on {what}: from {low:g} to {high:g} (rank {self.rank} has {value})")

    def broadcast_parameters(self, module: torch.nn.Module) -> None:
        """Copy rank 0's weights and buffers to every rank (as DDP does at start), so ranks start
        equal even if loading or adapter initialisation drew different random numbers."""
        if self.world_size == 1:
            return
        with torch.no_grad():
            for tensor in [*module.parameters(), *module.buffers()]:
                dist.broadcast(tensor.data, src=0)

    def sum_gradients(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Replace every gradient by its sum over ranks (in float32, bucket by bucket).

        A parameter no rank touched keeps ``grad=None``, as in a single process; one only some
        ranks touched (a rank with an empty shard touches none) counts as zero on the others.
        """
        if self.world_size == 1:
            return
        touched = torch.tensor([p.grad is not None for p in params], dtype=torch.float64, device=self.device)
        dist.all_reduce(touched)
        used = [p for p, count in zip(params, touched.tolist()) if count > 0]
        for p in used:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        for bucket in _buckets(used, BUCKET_ELEMENTS):
            flat = torch.cat([p.grad.reshape(-1).float() for p in bucket])  # [sum of numel]
            dist.all_reduce(flat)
            offset = 0
            for p in bucket:
                p.grad.copy_(flat[offset : offset + p.numel()].view_as(p.grad))
                offset += p.numel()

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


def _buckets(params: Sequence[torch.nn.Parameter], max_elements: int) -> list[list[torch.nn.Parameter]]:
    """Consecutive groups of at most ``max_elements`` elements (a larger tensor is a group alone)."""
    buckets: list[list[torch.nn.Parameter]] = []
    size = 0
    for p in params:
        if not buckets or size + p.numel() > max_elements:
            buckets.append([])
            size = 0
        buckets[-1].append(p)
        size += p.numel()
    return buckets
