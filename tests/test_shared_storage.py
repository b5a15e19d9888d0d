"""The GPU path keeps everything verl's workers touch on the shared volume, or refuses to start."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from flytekit.types.directory import FlyteDirectory
from flytekit.types.file import FlyteFile

from deltabelief.config import load_config
from deltabelief.integrations.verl import runner
from deltabelief.pipeline import RunContext
from deltabelief.shared_storage import SHARED_DIR_ENV, SharedStorageError
from tasks import train as train_tasks
from tasks.calibrate import Calibration


def _inputs(tmp_path: Path) -> tuple[Path, Path]:
    model = tmp_path / "scratch" / "sft"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    targets = tmp_path / "scratch" / "targets.parquet"
    pd.DataFrame([{"id": "a", "task": "twenty_questions", "target": "dog", "split": "train", "messages": [],
                   "extra": "{}"}]).to_parquet(targets)
    return model, targets


def _train_gpu(model: Path, targets: Path):
    return train_tasks.train_gpu.task_function(
        config=load_config("qwen3-1.7b"), model=FlyteDirectory(str(model)), targets=FlyteFile(str(targets)),
        calibration=Calibration(template="Is it '{target}'?"), run=RunContext())


def test_every_path_train_stage_gets_on_the_verl_backend_is_on_the_shared_volume(tmp_path, monkeypatch):
    shared = tmp_path / "shared"
    shared.mkdir()
    monkeypatch.setenv(SHARED_DIR_ENV, str(shared))
    seen = {}

    def fake_train_stage(config, model_dir, targets, template, excluded, out_dir, run):
        seen.update(model_dir=Path(model_dir), targets=Path(targets), out_dir=Path(out_dir))
        return Path(out_dir) / "final"

    monkeypatch.setattr(train_tasks, "train_stage", fake_train_stage)
    model, targets = _inputs(tmp_path)
    _train_gpu(model, targets)
    assert set(seen) == {"model_dir", "targets", "out_dir"}
    for what, path in seen.items():
        assert path.resolve().is_relative_to(shared.resolve()), f"{what}={path} is not on the shared volume"
    assert (seen["model_dir"] / "config.json").exists() and seen["targets"].exists()  # copied, not just named


def test_verl_backend_without_the_shared_volume_fails_before_any_work(tmp_path, monkeypatch):
    monkeypatch.delenv(SHARED_DIR_ENV, raising=False)
    monkeypatch.setattr(train_tasks, "train_stage", lambda *a: pytest.fail("train_stage ran without shared storage"))
    model, targets = _inputs(tmp_path)
    with pytest.raises(SharedStorageError, match=f"needs \\${SHARED_DIR_ENV}"):
        _train_gpu(model, targets)
    monkeypatch.setenv(SHARED_DIR_ENV, str(tmp_path / "not-mounted"))
    with pytest.raises(SharedStorageError, match="is not a directory"):
        _train_gpu(model, targets)


def test_run_verl_refuses_paths_off_the_shared_volume_before_writing_anything(tmp_path, monkeypatch):
    shared = tmp_path / "shared"
    shared.mkdir()
    monkeypatch.setenv(SHARED_DIR_ENV, str(shared))
    monkeypatch.setattr(runner, "prepare_verl_run", lambda *a, **k: pytest.fail("prepared a run off the volume"))
    model, targets = _inputs(tmp_path)
    config = load_config("tiny", [f"policy.model={model}"])
    with pytest.raises(SharedStorageError, match=r"targets=.*out_dir=.*policy\.model="):
        runner.run_verl(config, targets, tmp_path / "run")
    assert not (tmp_path / "run").exists()
