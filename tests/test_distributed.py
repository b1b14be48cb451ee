"""Data-parallel training with torchrun (gloo, real processes): the batches, one step's loss and
gradients, whole runs against one process, sharded feature caching, and resuming after a kill."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from killing import PROJECT, kill_when

from crossan.zoo.core.distributed import Processes
from crossan.zoo.core.errors import ConfigError
from crossan.zoo.features.states import open_states
from crossan.zoo.training.trainer import epoch_batches

# --standalone: a local rendezvous on a free port, so runs never collide on a fixed one.
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
# Two epochs of 13 steps on the small toy set. Dropout is off: the processes draw their own
# dropout masks, so with it on the runs would differ as runs with different seeds do.
COMPARED = [
    "--preset",
    "crossan-t",
    "--data",
    "toy",
    "--epochs",
    "2",
    "--patience",
    "10",
    "--batch-size",
    "64",
    "--set",
    "dropout=0",
    "--set",
    "attention_dropout=0",
    "--json",
]
# Same global batch as one process, so the loss history agrees to float rounding (1e-4 below).
# The metrics are counts of users: float sums in another order (thread count, CPU model, the
# reduction across processes) move the ranks of near-tie users, one whole user (1/800) at a
# time; a machine of the same size was seen two users apart. The tolerance is whole users, 1%
# of them; a wrong gradient shows in the loss history long before that.
NUM_TOY_USERS = 800
METRIC_TOLERANCE = 8 / NUM_TOY_USERS


@pytest.mark.parametrize("world_size", [2, 3])
def test_epoch_batches_deal_out_the_single_process_batches(world_size: int) -> None:
    num_windows, batch_size = 101, 6  # the last batch holds 5 windows: shares of 2, 2, 1 or 3, 2
    alone = epoch_batches(num_windows, batch_size, epoch=3, seed=7)
    shares = [epoch_batches(num_windows, batch_size, 3, 7, Processes(rank, world_size)) for rank in range(world_size)]
    assert all(len(batches) == len(alone) == 17 for batches in shares)
    for step, batch in enumerate(alone):
        dealt = [shares[rank][step] for rank in range(world_size)]
        assert sorted(torch.cat(dealt).tolist()) == sorted(batch.tolist())
        assert all(len(d) <= batch_size // world_size for d in dealt)
    assert sorted(torch.cat(alone).tolist()) == list(range(num_windows))
    assert not torch.equal(torch.cat(alone), torch.cat(epoch_batches(num_windows, batch_size, 4, 7)))
    with pytest.raises(ConfigError, match="batch_size 7 must be a multiple of the number of processes"):
        epoch_batches(num_windows, 7, 1, 7, Processes(0, world_size))


def test_shards_cover_the_rows_in_rank_order() -> None:
    shards = [Processes(rank, 3).shard(10) for rank in range(3)]
    assert shards == [range(0, 4), range(4, 7), range(7, 10)]
    assert [len(Processes(rank, 4).shard(2)) for rank in range(4)] == [1, 1, 0, 0]


@pytest.mark.slow
def test_one_step_over_two_processes_has_the_single_process_loss_and_gradients(toy_root: Path) -> None:
    result = subprocess.run(
        [*TORCHRUN, "tests/distributed_step.py", str(toy_root), "crossan-tiva"],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    cases = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(cases) == {"plain", "sliding windows", "a process without windows"}
    for case in cases.values():  # float32 sums in another order
        assert case["missing_gradients"] == 0
        assert case["gradient"] < 1e-5 and case["loss"] < 1e-5


def train(
    launcher: list[str], toy_root: Path, cache_dir: Path, run_dir: Path, args: list[str]
) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [
            *launcher,
            "train.py",
            *args,
            "--data-root",
            str(toy_root),
            "--cache-dir",
            str(cache_dir),
            "--run-dir",
            str(run_dir),
        ],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def history(run_dir: Path) -> list[float]:
    return [epoch["loss"] for epoch in json.loads((run_dir / "trainer_state.json").read_text())["history"]]


@pytest.mark.slow
def test_two_processes_train_as_one_process_with_the_same_global_batch(toy_root: Path, tmp_path: Path) -> None:
    cache_dir, sharded_cache = tmp_path / "cache", tmp_path / "sharded-cache"  # the second built a share each
    alone = train([sys.executable], toy_root, cache_dir, tmp_path / "one", COMPARED)
    spread = train(TORCHRUN, toy_root, sharded_cache, tmp_path / "two", COMPARED)

    one, two = json.loads(alone.stdout), json.loads(spread.stdout)
    assert spread.stdout.count("\n") == 1, "only the main process prints the metrics"
    assert " ".join(spread.stderr.split()).count("validating epoch 1") == 1, "only the main process shows progress"
    for split in ("valid", "test"):
        assert one[split] == pytest.approx(two[split], abs=METRIC_TOLERANCE)
    assert history(tmp_path / "two") == pytest.approx(history(tmp_path / "one"), abs=1e-4)
    assert json.loads((tmp_path / "two" / "config.json").read_text())["processes"] == 2

    (single_file,) = (cache_dir / "features" / "toy").iterdir()
    files = sorted(p.name for p in (sharded_cache / "features" / "toy").iterdir())
    assert files == [single_file.name], "the parts are joined into one file and removed"
    torch.testing.assert_close(
        open_states(sharded_cache / "features" / "toy" / single_file.name).float(),
        open_states(single_file).float(),
        atol=1e-3,
        rtol=1e-3,
    )


@pytest.mark.slow
def test_killed_torchrun_run_resumes_under_torchrun_to_the_uninterrupted_metrics(
    toy_root: Path, cache_dir: Path, tmp_path: Path
) -> None:
    args = [
        "--preset",
        "crossan-t",
        "--data",
        "toy",
        "--epochs",
        "2",
        "--patience",
        "10",
        "--batch-size",
        "64",
        "--json",
    ]  # with dropout: each process's random state is checkpointed and restored
    uninterrupted = json.loads(train(TORCHRUN, toy_root, cache_dir, tmp_path / "whole", args).stdout)

    run_dir = tmp_path / "killed"
    command = [
        *TORCHRUN,
        "train.py",
        *args,
        "--data-root",
        str(toy_root),
        "--cache-dir",
        str(cache_dir),
        "--run-dir",
        str(run_dir),
    ]
    kill_when(command, lambda lines: (run_dir / "trainer_state.json").is_file())  # launcher and workers at once
    assert json.loads((run_dir / "trainer_state.json").read_text())["epoch"] == 1
    assert not (run_dir / "metrics.json").exists()

    alone = subprocess.run(
        [sys.executable, "train.py", "--resume", str(run_dir)], cwd=PROJECT, capture_output=True, text=True, timeout=300
    )
    assert alone.returncode == 2
    assert "processes (2 recorded, 1 now) differ from its config.json" in alone.stderr

    resumed = subprocess.run(
        [*TORCHRUN, "train.py", "--resume", str(run_dir), "--json"],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming after epoch 1" in " ".join(resumed.stderr.split())
    assert json.loads(resumed.stdout) == uninterrupted
