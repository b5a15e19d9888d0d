"""The distributed warm start takes the single-process steps: 2 CPU ranks (gloo) vs one process.

The ranks run the torchrun entry point's ``main`` with torchrun's variables (tests/distributed_ranks.py).
"""

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from distributed_ranks import run_ranks

from deltabelief.config import load_config
from deltabelief.policy.loading import tiny_causal_lm
from deltabelief.training import sft_distributed
from deltabelief.training.data_parallel import DataParallel, _buckets
from deltabelief.training.sft import warm_start


def _game(first: str, answer: str, second: str, end: str) -> list[dict]:
    return [
        {"role": "system", "content": "You ask yes/no questions."},
        {"role": "user", "content": "Ask your first question."},
        {"role": "assistant", "content": first},
        {"role": "user", "content": answer},
        {"role": "assistant", "content": second},
        {"role": "user", "content": end},
    ]


GAMES = [  # 5 games: with batch_size 4 a batch of 1 leaves rank 1 an empty shard
    _game("Is it alive?", "No.", "Is it a car?", "Yes! You found it."),
    _game("Is it alive?", "Yes.", "Is it a dog?", "Yes! You found it."),
    _game("Is it alive?", "Yes.", "Is it a cat?", "No."),
    _game("Can you eat it?", "Yes.", "Is it an apple?", "Yes! You found it."),
    _game("Is it bigger than a breadbox?", "Yes.", "Is it a chair?", "No."),
]


@pytest.fixture(scope="module")
def trajectories(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "trajectories.parquet"
    pd.DataFrame({"id": [f"g{i}" for i in range(len(GAMES))], "split": ["train"] * len(GAMES),
                  "messages": GAMES}).to_parquet(path)
    return path


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(model_dir / "model.safetensors"))


@pytest.mark.parametrize("packing", ["none", "prefix_tree"])
def test_two_ranks_take_the_single_process_steps_and_only_rank_0_writes(tmp_path, trajectories, packing):
    # Micro-batches of 1: the ranks run different numbers of forwards. A small learning rate, because
    # Adam gives an element whose gradient is near zero a step of up to lr from float rounding alone,
    # and a shard's prefix-tree rows pack (so round) differently from the whole batch's.
    overrides = ["sft.epochs=2", "sft.batch_size=4", "sft.lr=5e-4", "sft.seed=3", f"sft.packing={packing}",
                 "sft.micro_batch_size=1"]
    out = tmp_path / "distributed"
    argv = ["--config", "tiny", "--trajectories", str(trajectories), "--out", str(out)]
    for item in overrides:
        argv += ["--set", item]
    writes = run_ranks(2, argv, out, tmp_path / "records")

    single_steps: list[dict] = []
    single = warm_start(load_config("tiny", overrides), trajectories, tmp_path / "single", progress=False,
                        log_fn=lambda metrics, step: single_steps.append(metrics))

    assert writes[1] == []  # rank 1 wrote nothing under --out (rank 0 wrote the files checked below)
    ours, reference = _weights(out / "model"), _weights(single)
    assert ours.keys() == reference.keys()
    for name in reference:
        assert torch.allclose(ours[name], reference[name], rtol=0, atol=1e-5), name
    initial = tiny_causal_lm(3)[0].state_dict()  # the tiny model is seeded by sft.seed
    assert any(not torch.equal(reference[name], initial[name]) for name in reference)  # it did train
    summary = json.loads((out / "sft_result.json").read_text())
    expected = json.loads((tmp_path / "single" / "sft_result.json").read_text())
    assert summary["num_trained_tokens"] == expected["num_trained_tokens"]
    assert summary["losses"] == pytest.approx(expected["losses"], abs=1e-5)
    assert len(summary["losses"]) >= 4  # at least 2 batches in each of 2 epochs
    steps = [json.loads(line) for line in (out / sft_distributed.METRICS_FILE).read_text().splitlines()]
    assert [s["step"] for s in steps] == list(range(1, len(summary["losses"]) + 1))
    assert [s["loss/sft"] for s in steps] == pytest.approx(summary["losses"])
    # Adam hides a gradient off by a constant factor (e.g. averaged instead of summed); the norm does not
    assert [s["loss/grad_norm"] for s in steps] == pytest.approx([s["loss/grad_norm"] for s in single_steps], rel=1e-4)


def test_shards_are_contiguous_and_cover_the_batch():
    batch = list(range(7))
    shards = [DataParallel(rank, 3).shard(batch) for rank in range(3)]
    assert shards == [[0, 1, 2], [3, 4], [5, 6]]
    assert [DataParallel(rank, 2).shard([9]) for rank in range(2)] == [[9], []]


def test_gradient_buckets_keep_order_and_bound_their_size():
    params = [torch.nn.Parameter(torch.zeros(n)) for n in (3, 3, 5, 1)]
    assert [[p.numel() for p in b] for b in _buckets(params, 6)] == [[3, 3], [5, 1]]
    assert [[p.numel() for p in b] for b in _buckets(params, 2)] == [[3], [3], [5], [1]]


def test_entry_point_outside_torchrun_says_how_to_launch(monkeypatch, trajectories, tmp_path):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(RuntimeError, match="torchrun"):
        sft_distributed.main(["--config", "tiny", "--trajectories", str(trajectories), "--out", str(tmp_path)])
    assert not any(tmp_path.iterdir())



def test_the_warm_start_stage_launches_torchrun_and_forwards_rank_0s_metrics(tmp_path, trajectories):
    """sft.processes > 1: the stage's launcher runs the entry point under torchrun (2 CPU processes here)."""
    config = load_config("tiny", ["sft.processes=2", "sft.epochs=1", "sft.batch_size=4", "policy.device=cpu"])
    logged = []
    model_dir = sft_distributed.launch_warm_start(config, trajectories, tmp_path / "sft",
                                                  log_fn=lambda metrics, step: logged.append((step, metrics)))
    assert model_dir == tmp_path / "sft" / "model" and (model_dir / "config.json").exists()
    assert [step for step, _ in logged] == [1, 2]  # 5 games in batches of 4
    assert all("loss/sft" in metrics for _, metrics in logged)

