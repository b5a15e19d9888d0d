"""A run directory belongs to one run: another run is refused, --resume checks identity, corrupt checkpoints fall back."""

import json
import logging
import shutil

import pytest

from deltabelief.config import load_config
from deltabelief.training.checkpoints import CorruptCheckpointError, load_latest_checkpoint
from deltabelief.training.rl import RLTrainer
from deltabelief.training.run_dir import RUN_FILE
from deltabelief.types import Target

TARGETS = [Target(f"t{i}", "twenty_questions", noun) for i, noun in enumerate(["cat", "dog", "spoon"])]


def _trainer(out_dir, *overrides, resume=False, targets=TARGETS):
    trainer = RLTrainer(load_config("tiny", list(overrides)), targets, out_dir, progress=False)
    trainer.setup(resume=resume)
    return trainer


def test_a_run_records_its_identity(tmp_path):
    trainer = _trainer(tmp_path / "run")
    recorded = json.loads((tmp_path / "run" / RUN_FILE).read_text())
    assert recorded == trainer.identity
    assert set(recorded) == {"config_hash", "model", "targets", "num_targets"} and recorded["model"] == "tiny"


def test_another_run_in_the_same_directory_is_refused_and_nothing_is_touched(tmp_path):
    first = _trainer(tmp_path / "run")
    first.save_checkpoint(1)
    before = sorted(p.name for p in (tmp_path / "run").rglob("*"))
    with pytest.raises(ValueError, match=r"already holds another run \(config_hash was .*Choose a new --out"):
        _trainer(tmp_path / "run", "estimator.name=grpo")
    with pytest.raises(ValueError, match=r"another run \(targets was .*num_targets was 3, now 2"):
        _trainer(tmp_path / "run", targets=TARGETS[:2])
    assert sorted(p.name for p in (tmp_path / "run").rglob("*")) == before


def test_the_same_run_may_restart_or_resume_and_be_extended(tmp_path):
    _trainer(tmp_path / "run").save_checkpoint(1)
    _trainer(tmp_path / "run")  # the same run again, from the start
    resumed = _trainer(tmp_path / "run", "train.num_steps=20", "train.keep_checkpoints=0", resume=True)
    assert resumed.start_step == 1  # how long to run and what to keep are not the run's identity


def test_resume_refuses_another_runs_directory(tmp_path):
    _trainer(tmp_path / "run").save_checkpoint(1)
    with pytest.raises(ValueError, match=r"belongs to another run \(config_hash was .*--resume continues only"):
        _trainer(tmp_path / "run", "optim.lr=0.001", resume=True)


def test_resume_refuses_a_checkpoint_written_by_another_run(tmp_path):
    _trainer(tmp_path / "a").save_checkpoint(1)
    _trainer(tmp_path / "b", "reward.belief_reward_weight=0.5")
    shutil.copytree(tmp_path / "a" / "checkpoints", tmp_path / "b" / "checkpoints")  # e.g. copied by hand
    with pytest.raises(ValueError, match=r"step_000001 was written by another run \(config_hash was"):
        _trainer(tmp_path / "b", "reward.belief_reward_weight=0.5", resume=True)


def test_files_of_an_unidentified_run_are_not_overwritten(tmp_path):
    (tmp_path / "run" / "model").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"already holds model of a run that recorded no run.json"):
        _trainer(tmp_path / "run")


def test_a_corrupt_checkpoint_falls_back_to_the_previous_one_naming_the_bad_file(tmp_path, caplog):
    trainer = _trainer(tmp_path / "run")
    trainer.save_checkpoint(1)
    newest = trainer.save_checkpoint(2)
    state_file = newest / "trainer_state.pt"
    state_file.write_bytes(state_file.read_bytes()[:100])  # truncated, still marked COMPLETE
    with caplog.at_level(logging.WARNING):
        resumed = _trainer(tmp_path / "run", resume=True)
    assert resumed.start_step == 1 and resumed.last_checkpoint.name == "step_000001"
    assert str(state_file) in caplog.text and "cannot be read" in caplog.text


def test_when_every_checkpoint_is_corrupt_the_error_names_each_bad_file(tmp_path):
    trainer = _trainer(tmp_path / "run")
    paths = [trainer.save_checkpoint(1), trainer.save_checkpoint(2)]
    (paths[0] / "trainer_state.pt").write_bytes(b"not a checkpoint")
    (paths[1] / "model" / "model.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(CorruptCheckpointError) as caught:
        load_latest_checkpoint(tmp_path / "run" / "checkpoints", model=trainer.policy.model)
    assert str(paths[0] / "trainer_state.pt") in str(caught.value)
    assert str(paths[1] / "model" / "model.safetensors") in str(caught.value)
