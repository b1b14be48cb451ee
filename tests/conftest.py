"""Shared fixtures: one small toy data set and one feature cache per test session."""
from __future__ import annotations

import os

# Before anything imports triton (transformers does): the Triton interpreter, so the kernel
# tests run on the CPU.
os.environ.setdefault("TRITON_INTERPRET", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

SMALL_TOY = {"num_items": 128, "num_users": 800}


@pytest.fixture(scope="session")
def toy_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from zoo.data.toy import generate_toy

    return generate_toy(tmp_path_factory.mktemp("data") / "toy", seed=0, **SMALL_TOY)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")
