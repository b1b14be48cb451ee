"""Data sets: readers for the supported layouts and the embedded toy generator."""

from __future__ import annotations

from pathlib import Path

from crossan.zoo.core.errors import ConfigError
from crossan.zoo.data.dataset import MIN_INTERACTIONS, PAD, SequenceDataset
from crossan.zoo.data.errors import DataError
from crossan.zoo.data.readers import read_amazon, read_microlens

__all__ = [
    "DATA_KINDS",
    "MIN_INTERACTIONS",
    "PAD",
    "DataError",
    "SequenceDataset",
    "load_dataset",
    "read_amazon",
    "read_microlens",
]

DATA_KINDS = ("toy", "microlens", "amazon")


def load_dataset(
    kind: str, root: Path | None, cache_dir: Path, cover_dir: str = "covers", video_dir: str = "videos"
) -> SequenceDataset:
    """Read data set `kind` from `root`.

    `toy` is generated with default parameters under `cache_dir/data/toy` (once), or into
    `root` when that folder holds no finished toy set; a finished one is read as it is.
    """
    if kind == "toy":
        from crossan.zoo.data.toy import generate_toy

        if root is None:
            root = generate_toy(Path(cache_dir) / "data" / "toy")
        elif not (Path(root) / ".complete").is_file():
            generate_toy(root)
        return read_microlens(Path(root), name="toy")
    if root is None:
        raise ConfigError(f"--data {kind} needs --data-root DIR")
    if kind == "microlens":
        return read_microlens(Path(root), cover_dir=cover_dir, video_dir=video_dir)
    if kind == "amazon":
        return read_amazon(Path(root))
    raise ConfigError(f"unknown data set kind {kind!r}; choose one of {DATA_KINDS}")
