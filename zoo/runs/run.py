"""Reopen a finished run: its model, its data set and its cached item features."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from crossan.zoo.core.errors import ConfigError, MissingFileError
from crossan.zoo.core.reading import read_json_object
from crossan.zoo.data import DataError, SequenceDataset, load_dataset
from crossan.zoo.data.catalogues import combine_catalogues
from crossan.zoo.features.prepare import LOCATION_KEYS, open_recorded_features
from crossan.zoo.features.store import ItemFeatures
from crossan.zoo.models import build_model, load_model
from crossan.zoo.models.recommender import Recommender
from crossan.zoo.training.checkpoint import CheckpointStore

__all__ = [
    "Run",
    "catalogue_of_run",
    "check_same_backbones",
    "differing_identity_keys",
    "finished_run_config",
    "open_run",
    "recorded_dataset",
]


@dataclass
class Run:
    """A trained run: its directory, config.json, best-epoch model, the data set it ranks and
    that data set's item features."""

    directory: Path
    config: dict[str, Any]
    model: Recommender
    dataset: SequenceDataset
    features: ItemFeatures
    zero_shot: bool = False
    """Whether `dataset` is a catalogue the run never trained on (`crossan.zoo.runs.zero_shot`)."""


def catalogue_of_run(run: Run, index: int) -> Run:
    """A run trained on several catalogues, narrowed to its catalogue `index` as it was trained
    there: a model sized for that catalogue's items, with that catalogue's rows of every per-item
    state (`Recommender.catalogue_state`: which items occur in training), its features' rows
    and its users. Ranks and metrics are then that catalogue's alone."""
    part = run.dataset.parts[index]
    per_item = run.model.catalogue_state()
    model = build_model(run.model.config.fit_to_data(part.num_items, run.features.shapes()))
    model.load_state_dict(
        {
            name: tensor[part.item_rows] if name in per_item else tensor
            for name, tensor in run.model.state_dict().items()
        }
    )
    return Run(
        run.directory, run.config, model.to(run.features.device).eval(), part.dataset, run.features.rows(part.item_rows)
    )


def recorded_dataset(
    config: dict[str, Any], run_dir: Path | None = None, data_root: Path | None = None, cache_dir: Path | None = None
) -> SequenceDataset:
    """The data set a run's `config.json` describes (every catalogue of a run over several).

    It is read from `data_root` when given, else from where it was when the run was trained,
    else from the same place relative to the run folder (`run_dir`), so a run folder moved
    together with its data still finds it; none there is one line naming every path tried.
    The fingerprint is the caller's to compare."""
    data = config["data"]
    cache = cache_dir if cache_dir is not None else Path(config["feature_settings"]["cache_dir"])
    if "catalogues" in data:
        if data_root is not None:
            raise ConfigError(
                f"{run_dir or 'the run'} trained on {len(data['catalogues'])} catalogues; it finds each where it "
                "was or at the same place beside the run folder, and one --data-root cannot say where they all are"
            )
        where = "put it back there or beside the run folder as it was"
        return combine_catalogues(
            [_read_recorded(catalogue, run_dir, None, cache, where) for catalogue in data["catalogues"]]
        )
    return _read_recorded(data, run_dir, data_root, cache, "give --data-root where it is now")


def _read_recorded(
    data: dict[str, Any], run_dir: Path | None, data_root: Path | None, cache: Path, hint: str
) -> SequenceDataset:
    """The one catalogue `data` (a `describe_data` record) describes, from the first of its places
    found; `hint` ends the message when there is none."""
    candidates = [Path(data_root)] if data_root is not None else [Path(data["root"])]
    if data_root is None and run_dir is not None and "root_from_run" in data:
        candidates.append(Path(run_dir) / data["root_from_run"])
    found = next((path for path in candidates if path.is_dir()), None)
    if found is None:
        tried = " nor ".join(str(path) for path in dict.fromkeys(candidates))
        raise MissingFileError(f"the {data['kind']} data set of {run_dir or 'the run'} is not at {tried}; {hint}")
    return load_dataset(data["kind"], found, cache, data["cover_dir"], data["video_dir"])


def finished_run_config(run_dir: Path) -> dict[str, Any]:
    """The `config.json` of the finished run in `run_dir`; one line if it is no run folder or
    has not finished."""
    if not (run_dir / "config.json").is_file():
        raise MissingFileError(f"{run_dir}: not a run directory (no config.json)")
    if not CheckpointStore(run_dir).finished():
        raise MissingFileError(
            f"{run_dir}: the run has not finished (it is still training or was killed); "
            f"continue it with `python train.py --resume {run_dir}`"
        )
    return read_json_object(run_dir / "config.json", ("preset", "model", "data", "feature_settings", "features"))


def open_run(
    run_dir: str | Path,
    device: torch.device | str = "cpu",
    data_root: Path | None = None,
    cache_dir: Path | None = None,
    full_check: bool = False,
) -> Run:
    """Load a run directory written by `train.py`, from any working directory.

    Its data set must be where it was, beside it as it was, or at `data_root` (the same data,
    by fingerprint); its feature cache where it was or under `cache_dir`. Damaged files,
    non-finite weights and non-finite cached features are one line each (`full_check` reads
    every cached row; by default a sample)."""
    run_dir = Path(run_dir)
    config = finished_run_config(run_dir)
    model = load_model(run_dir, device=str(device))
    data = config["data"]
    dataset = recorded_dataset(config, run_dir, data_root, cache_dir)
    found = {"fingerprint": dataset.fingerprint(), "sequences": dataset.sequences_fingerprint()}
    for key, value in found.items():
        if key in data and data[key] != value:  # runs of older versions record no `sequences`
            what = "catalogue" if key == "fingerprint" else "users' sequences"
            hint = " (`evaluate.py --data KIND` ranks another catalogue zero-shot)" if key == "fingerprint" else ""
            raise DataError(
                f"the data set at {dataset.root} is not the one {run_dir} was trained on (its {what} "
                f"hash {value} != {data[key]} recorded): it changed since, or it is another data set{hint}"
            )
    features = open_recorded_features(
        config["features"]["backbones"],
        dataset.num_items,
        device,
        with_rows=model.config.reads_item_rows,
        cache_dir=cache_dir,
        full_check=full_check,
    )
    return Run(run_dir, config, model, dataset, features)


def differing_identity_keys(recorded: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """The keys, sorted, on which a backbone's `recorded` identity and its identity `now` differ,
    its cache's location aside. A key one of them lacks was not recorded by the version that
    wrote it (runs before the path-free config digest, say) and is not compared."""
    return [key for key in sorted(set(recorded) & set(now)) if key not in LOCATION_KEYS and recorded[key] != now[key]]


def check_same_backbones(run_dir: Path, recorded: dict[str, Any], built: dict[str, Any]) -> None:
    """One line when a backbone of `built` (as `prepare_features` describes them) is not the one
    the run in `run_dir` trained over (`recorded`: other weights, configuration, pooling, kept
    layers or preprocessing): its states would mean something else to the run's weights."""
    for modality, now in built.items():
        then = recorded.get(modality)
        if then is None:
            raise DataError(f"{run_dir} trained over no {modality} backbone")
        differing = differing_identity_keys(then, now)
        if differing:
            key = differing[0]
            raise DataError(
                f"the {modality} backbone loaded now is not the one {run_dir} trained over ({key}: "
                f"{now.get(key)!r} now, {then.get(key)!r} recorded); its states would mean something else"
            )
