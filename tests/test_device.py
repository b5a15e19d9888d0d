"""policy.device: where SFT, calibration and evaluation put the policy's weights."""

import pytest
import torch

from deltabelief.config import ConfigError, load_config
from deltabelief.policy.loading import load_causal_lm, resolve_device
from deltabelief.policy.policy import Policy

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour on a machine without CUDA")


@no_cuda
def test_auto_is_the_cpu_without_cuda_and_cpu_is_always_the_cpu():
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("auto", index=1) == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")


@no_cuda
def test_cuda_without_cuda_names_the_setting():
    with pytest.raises(RuntimeError, match=r"policy\.device is 'cuda'.*policy\.device=auto or cpu"):
        resolve_device("cuda")
    config = load_config("tiny", ["policy.device=cuda"])
    with pytest.raises(RuntimeError, match=r"policy\.device"):
        Policy.from_config(config.policy)
    with pytest.raises(RuntimeError, match=r"policy\.device"):
        load_causal_lm("tiny", device="cuda")


def test_unknown_settings_are_refused():
    with pytest.raises(ValueError, match=r"policy\.device must be one of"):
        resolve_device("gpu")
    with pytest.raises(ConfigError, match="policy.device"):
        load_config("tiny", ["policy.device=gpu"])


def test_models_load_on_the_resolved_device():
    policy = Policy.from_config(load_config("tiny", ["policy.device=auto"]).policy)
    assert policy.device == resolve_device("auto")
    model, _ = load_causal_lm("tiny", device=torch.device("cpu"))
    assert next(model.parameters()).device == torch.device("cpu")


def test_paper_presets_use_the_gpu_their_pod_has_and_cpu_presets_stay_on_the_cpu():
    assert {load_config(name).policy.device for name in ("qwen3-1.7b", "qwen3-4b")} == {"auto"}
    assert {load_config(name).policy.device for name in ("cpu", "tiny")} == {"cpu"}
