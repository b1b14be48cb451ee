"""Shared fixtures: one small toy data set and one feature cache per test session."""
from __future__ import annotations

from pathlib import Path

import pytest

SMALL_TOY = {"num_items": 128, "num_users": 800}


@pytest.fixture(scope="session")
def toy_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from zoo.data.toy import generate_toy

    return generate_toy(tmp_path_factory.mktemp("data") / "toy", seed=0, **SMALL_TOY)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")
