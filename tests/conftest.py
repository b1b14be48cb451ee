"""Shared fixtures: one small toy data set, one feature cache, one toy-trained run and its
exports (without and with backbones) per test session."""

from __future__ import annotations

import os

# Before anything imports triton (transformers does): the Triton interpreter, so the kernel
# tests run on the CPU.
os.environ.setdefault("TRITON_INTERPRET", "1")

import subprocess
import sys
from pathlib import Path

import pytest

# `python -m pytest` puts the working directory, the repository root, first on sys.path; there the
# folders zoo/, kernels/ and export/ would import under their bare names as second copies of
# crossan.zoo, crossan.kernels and crossan.export (other classes, a second model registry). The
# tests import the project by its one name, as installed; pytest imports the tests themselves
# with --import-mode=importlib and finds their helper modules through `pythonpath` (pyproject.toml).
_REPO = Path(__file__).resolve().parents[1]
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != _REPO]

SMALL_TOY = {"num_items": 128, "num_users": 800}


@pytest.fixture(scope="session")
def toy_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from crossan.zoo.data.toy import generate_toy

    return generate_toy(tmp_path_factory.mktemp("data") / "toy", seed=0, **SMALL_TOY)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def toy_run(toy_root: Path, cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """crossan-tiva trained for one epoch by train.py on the session's small toy data set (read
    as MicroLens) with the tiny random backbones, caching features in the session's cache."""
    run_dir = tmp_path_factory.mktemp("toy-run") / "run"
    subprocess.run(
        [
            sys.executable,
            "train.py",
            "--preset",
            "crossan-tiva",
            "--data",
            "microlens",
            "--data-root",
            str(toy_root),
            "--epochs",
            "1",
            "--run-dir",
            str(run_dir),
            "--cache-dir",
            str(cache_dir),
        ],
        cwd=Path(__file__).resolve().parents[1],
        check=True,
        capture_output=True,
    )
    return run_dir


@pytest.fixture(scope="session")
def toy_export(toy_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`python -m crossan.export --run <toy_run>` into a fresh folder: the encoders and the item
    table, which serve the known catalogue."""
    return _export(toy_run, tmp_path_factory.mktemp("toy-export"))


@pytest.fixture(scope="session")
def toy_export_with_backbones(toy_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same export `--with-backbones`, which serves new items from raw content (about a
    minute: four more ONNX graphs, checked on real items)."""
    return _export(toy_run, tmp_path_factory.mktemp("toy-export-backbones"), "--with-backbones")


def _export(run: Path, out: Path, *options: str) -> Path:
    from crossan.export.__main__ import main as export_main

    assert export_main(["--run", str(run), "--out", str(out), *options]) == 0
    return out
