"""Kill a real training process with SIGKILL at three points, resume it, and get the metrics of an
uninterrupted run; finished runs stay as they are; resumes that disagree with the run stop."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from killing import kill_when

PROJECT = Path(__file__).resolve().parents[1]
# Small batches and evaluation batches stretch the epoch and the validation to about a second
# each on the small toy set, so that the kill points below are hit reliably.
TRAIN_ARGS = [
    "--preset",
    "crossan-t",
    "--data",
    "toy",
    "--epochs",
    "3",
    "--patience",
    "10",
    "--batch-size",
    "8",
    "--set",
    "eval_batch_size=8",
    "--json",
]


def train_command(toy_root: Path, cache_dir: Path, run_dir: Path) -> list[str]:
    return [
        sys.executable,
        "train.py",
        *TRAIN_ARGS,
        "--data-root",
        str(toy_root),
        "--cache-dir",
        str(cache_dir),
        "--run-dir",
        str(run_dir),
    ]


def resume(run_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "train.py", "--resume", str(run_dir), "--json", *extra],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=600,
    )


def checkpointed_epoch(run_dir: Path) -> int:
    path = run_dir / "trainer_state.json"
    return json.loads(path.read_text())["epoch"] if path.is_file() else 0


@pytest.fixture(scope="module")
def uninterrupted(toy_root: Path, cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    run_dir = tmp_path_factory.mktemp("runs") / "uninterrupted"
    result = subprocess.run(
        train_command(toy_root, cache_dir, run_dir), cwd=PROJECT, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((run_dir / "metrics.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("kill_point", ["mid_epoch", "after_checkpoint", "during_validation"])
def test_killed_run_resumes_to_the_uninterrupted_metrics(
    kill_point: str, uninterrupted: dict, toy_root: Path, cache_dir: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / kill_point
    first_checkpoint: list[float] = []

    def should_kill(lines: list[str]) -> bool:
        if kill_point == "during_validation":
            return bool(lines) and lines[-1] == "validating epoch 2"
        if checkpointed_epoch(run_dir) < 1:
            return False
        if kill_point == "after_checkpoint":
            return True
        first_checkpoint[:] = first_checkpoint or [time.monotonic()]  # mid-epoch: 0.3 s into epoch 2
        return time.monotonic() - first_checkpoint[0] > 0.3

    lines = kill_when(train_command(toy_root, cache_dir, run_dir), should_kill)
    epoch = checkpointed_epoch(run_dir)
    if kill_point == "during_validation":
        assert epoch == 1 and lines[-1] == "validating epoch 2"
    elif kill_point == "mid_epoch":
        assert epoch == 1 and "validating epoch 2" not in lines
    else:
        assert epoch >= 1
    assert not (run_dir / "metrics.json").exists()
    unfinished = subprocess.run(
        [sys.executable, "evaluate.py", "--run", str(run_dir)], cwd=PROJECT, capture_output=True, text=True, timeout=300
    )
    assert unfinished.returncode == 2 and "has not finished" in unfinished.stderr
    assert len(unfinished.stderr.strip().splitlines()) == 1

    resumed = resume(run_dir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming after epoch {epoch}" in " ".join(resumed.stderr.split())
    assert json.loads(resumed.stdout) == uninterrupted
    assert json.loads((run_dir / "metrics.json").read_text()) == uninterrupted


@pytest.mark.slow
def test_finished_run_is_left_alone_and_disagreeing_resume_stops(
    uninterrupted: dict, toy_root: Path, cache_dir: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "finished"
    subprocess.run(
        train_command(toy_root, cache_dir, run_dir), cwd=PROJECT, capture_output=True, check=True, timeout=600
    )
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in run_dir.iterdir() if p.is_file()}
    again = resume(run_dir)
    assert again.returncode == 0 and "finished already; nothing to resume" in " ".join(again.stderr.split())
    assert json.loads(again.stdout) == uninterrupted
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in run_dir.iterdir() if p.is_file()} == before

    (run_dir / "trainer_state.json").write_text(
        json.dumps({**json.loads((run_dir / "trainer_state.json").read_text()), "finished": False})
    )
    differing = resume(run_dir, "--epochs", "9", "--set", "adapter_dim=4")
    assert differing.returncode == 2
    assert differing.stderr.strip().splitlines() == [
        f"error: cannot resume {run_dir}: train.epochs, model.adapter_dim differ from its config.json"
    ]
    config = json.loads((run_dir / "config.json").read_text())
    (run_dir / "config.json").write_text(json.dumps({**config, "code": "0" * 16}))
    changed_code = resume(run_dir)
    assert changed_code.returncode == 2 and "code differ" in changed_code.stderr
