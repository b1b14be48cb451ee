"""Reopen a finished run: its model, its data set and its cached item features."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from crossan.zoo.data import DataError, SequenceDataset, load_dataset
from crossan.zoo.errors import MissingFileError
from crossan.zoo.features.prepare import open_recorded_features
from crossan.zoo.features.store import ItemFeatures
from crossan.zoo.models.base import Recommender
from crossan.zoo.models import load_model
from crossan.zoo.training.checkpoint import CheckpointStore, read_json

__all__ = ["Run", "open_run", "recorded_dataset"]


@dataclass
class Run:
    """A trained run: its directory, config.json, best-epoch model, data set and item features."""

    directory: Path
    config: dict[str, Any]
    model: Recommender
    dataset: SequenceDataset
    features: ItemFeatures


def recorded_dataset(config: dict[str, Any]) -> SequenceDataset:
    """The data set a run's `config.json` describes, read from where it was (with the run's cache folder)."""
    data = config["data"]
    return load_dataset(data["kind"], Path(data["root"]), Path(config["feature_settings"]["cache_dir"]),
                        data["cover_dir"], data["video_dir"])


def open_run(run_dir: str | Path, device: torch.device | str = "cpu") -> Run:
    """Load a run directory written by `train.py`; the data set must still be where it was."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file():
        raise MissingFileError(f"{run_dir}: not a run directory (no config.json)")
    if not CheckpointStore(run_dir).finished():
        raise MissingFileError(f"{run_dir}: the run has not finished (it is still training or was killed); "
                               f"continue it with `python train.py --resume {run_dir}`")
    config = read_json(run_dir / "config.json")
    model = load_model(run_dir, device=str(device))
    data = config["data"]
    dataset = recorded_dataset(config)
    if dataset.fingerprint() != data["fingerprint"]:
        raise DataError(f"the data set at {data['root']} changed since {run_dir} was trained "
                        f"(fingerprint {dataset.fingerprint()} != {data['fingerprint']})")
    features = open_recorded_features(config["features"]["backbones"], dataset.num_items, device,
                                      with_rows=model.config.reads_item_rows)
    return Run(run_dir, config, model, dataset, features)
