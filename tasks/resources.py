"""One resource profile per role, declared once (requests = limits unless noted)."""

from flytekit import Resources

# Data synthesis, contracts, registry calls: light CPU work.
LIGHT = Resources(cpu="1", mem="2Gi")
# Single-machine model work on the CPU (warm start, calibration, evaluation, the torch trainer).
CPU_MODEL = Resources(cpu="2", mem="12Gi")
# Ray head of the GPU training job (drives verl's trainer; no GPU of its own).
RAY_HEAD = Resources(cpu="8", mem="64Gi")
# One GPU worker node of the verl job; its GPU count comes from the preset's cluster section.
GPU_WORKER_MEM = "400Gi"
GPU_WORKER_CPU = "32"
