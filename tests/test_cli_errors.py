"""What a user sees when a command fails: one line naming the file, row or field and the rule,
a non-zero exit, the traceback only with -v; Ctrl-C in training says how to resume."""

from __future__ import annotations

import json
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deltabelief.cli import main

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad-inputs")
    (root / "table.parquet").write_text("target,split\ndog,train\n")  # a CSV under a parquet name
    (root / "words.txt").write_bytes(b"dog\ncat\n\x9b\xff\x00binary\n")
    (root / "broken.yaml").write_text("train:\n  num_steps: 5\n  lr: [0.1\npolicy: {}\n")
    (root / "paprika.json").write_text('{"train": [{"agent": "hi"}], "eval": []}')
    return root


def _closed_port() -> int:
    """A loopback port nothing listens on (connections are refused at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _cases(root: Path):
    """(argv, exit code, words the one line must contain)."""
    missing = root / "nowhere" / "targets.parquet"
    return {
        "missing file (validate)": (["validate", "--kind", "targets", str(missing)], 1, [str(missing)]),
        "missing file (train)": (["train", "--config", "tiny", "--targets", str(missing), "--out", str(root / "run")],
                                 1, [str(missing), "no such file"]),
        "csv named .parquet (validate)": (["validate", "--kind", "targets", str(root / "table.parquet")], 1,
                                          [str(root / "table.parquet"), "not a parquet file"]),
        "csv named .parquet (train)": (["train", "--config", "tiny", "--targets", str(root / "table.parquet"),
                                        "--out", str(root / "run")], 1, [str(root / "table.parquet"), "not a parquet file"]),
        "binary word list": (["synth", "--config", "tiny", "--source", f"words:{root / 'words.txt'}", "--out",
                              str(root / "synth")], 1, [str(root / "words.txt"), "line 3", "UTF-8"]),
        "yaml syntax error": (["synth", "--config", str(root / "broken.yaml"), "--out", str(root / "synth")], 2,
                              [str(root / "broken.yaml"), "line 4"]),
        "source format": (["synth", "--config", "tiny", "--source", f"paprika:{root / 'paprika.json'}", "--out",
                           str(root / "synth")], 1, ["paprika.json:train[0]", "'env'"]),
        "judge unavailable": (["judge", "--config", "tiny", "--judge", "openai", "--target", "dog", "--question",
                               "Is it alive?", "--set", f"judge.base_url=http://127.0.0.1:{_closed_port()}/v1",
                               "--set", "judge.max_retries=0"], 1, ["judge server at http://127.0.0.1", "did not answer"]),
    }


CASES = list(_cases(Path("/x")))


@pytest.mark.parametrize("case", CASES)
def test_an_expected_error_is_one_line_naming_the_file_and_rule(case, bad_files, capsys):
    argv, code, words = _cases(bad_files)[case]
    assert main(argv) == code
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"deltabelief {argv[0]}: ")
    for word in words:
        assert word in lines[0]


@pytest.mark.parametrize("case", ["missing file (train)", "binary word list", "yaml syntax error", "judge unavailable"])
def test_verbose_keeps_the_traceback_and_still_ends_with_the_line(case, bad_files, capsys):
    argv, code, words = _cases(bad_files)[case]
    assert main(["-v", *argv]) == code
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"deltabelief {argv[0]}: ") and all(word in last for word in words)


def test_an_unexpected_error_is_not_hidden(monkeypatch):
    import deltabelief.cli as cli

    def broken(args):
        raise KeyError("a bug, not a user error")

    monkeypatch.setattr(cli, "cmd_validate", broken)
    with pytest.raises(KeyError, match="a bug"):
        cli.main(["validate", "--kind", "targets", "x.parquet"])


def test_the_installed_command_prints_one_line_and_exits_non_zero(bad_files):
    argv, code, words = _cases(bad_files)["csv named .parquet (validate)"]
    done = subprocess.run([sys.executable, "-m", "deltabelief.cli", *argv], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == code
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert all(word in done.stderr for word in words)


# ---------------------------------------------------------------- Ctrl-C during training


def _cli(*argv: str) -> list[str]:
    return [sys.executable, "-m", "deltabelief.cli", *argv]


def _first_checkpoint(out: Path, process: subprocess.Popen, limit_s: float = 600) -> Path:
    """Wait until the run has a complete checkpoint (or fail if it exits first)."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        found = sorted((out / "checkpoints").glob("step_*/COMPLETE"))
        if found:
            return found[0].parent
        if process.poll() is not None:
            pytest.fail(f"train exited ({process.returncode}) before its first checkpoint: {process.stderr.read()}")
        time.sleep(0.2)
    pytest.fail(f"no checkpoint under {out} after {limit_s}s")


def test_ctrl_c_in_training_names_the_checkpoint_and_the_resume_command(tmp_path):
    from deltabelief.config import load_config
    from deltabelief.synthesis import synthesize

    config = load_config("tiny", ["data.teacher=none"])
    targets = synthesize(config.data, config.game, tmp_path / "data").targets_path
    out = tmp_path / "run"
    small = [f"--set={key}" for key in ("train.targets_per_step=1", "train.rollouts_per_target=2",
                                        "ppo.ppo_epochs=1", "ppo.mini_batch_size=2", "ppo.micro_batch_size=2",
                                        "train.checkpoint_every=1")]  # 2 games a step
    argv = ["train", "--config", "tiny", "--targets", str(targets), "--out", str(out),
            "--set", "train.num_steps=1000", *small]
    process = subprocess.Popen(_cli(*argv), cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _first_checkpoint(out, process)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    checkpoint = max((out / "checkpoints").glob("step_*/COMPLETE")).parent  # the newest complete one
    assert f"last checkpoint: {checkpoint}" in last
    resume = last.split("resume with: ", 1)[1]
    assert shlex.split(resume) == ["deltabelief", *argv, "--resume"]

    # The printed command continues the run (here for one more step than the checkpoint holds).
    step = int(checkpoint.name.removeprefix("step_"))
    done = subprocess.run(_cli(*shlex.split(resume)[1:], "--set", f"train.num_steps={step + 1}"), cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert f"resumed from {checkpoint} at step {step}" in done.stderr
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, step + 2))
