"""From a data set and feature settings to a trained run directory: training, resuming, files."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from crossan.zoo.analysis.curves import draw_training_curves
from crossan.zoo.core.distributed import SINGLE, Processes
from crossan.zoo.core.errors import ConfigError, CorruptFileError, MissingFileError
from crossan.zoo.core.reading import read_json_object
from crossan.zoo.data import SequenceDataset
from crossan.zoo.features.prepare import prepare_features
from crossan.zoo.features.settings import FeatureSettings
from crossan.zoo.models import build_model, config_from_dict, preset_config
from crossan.zoo.models.config import AUTO, RecommenderConfig
from crossan.zoo.runs.folder import check_new_run_folder, clear_run_folder, flatten_settings
from crossan.zoo.runs.init_from import initialise_from
from crossan.zoo.runs.run import Run, recorded_dataset
from crossan.zoo.training.checkpoint import CheckpointStore, read_json, save_per_user, save_weights, write_json
from crossan.zoo.training.evaluation import catalogue_metrics, evaluate_popularity, evaluation_users
from crossan.zoo.training.trainer import (
    TrainConfig,
    Trainer,
    TrainingOutcome,
    check_trains_on_catalogues,
    resolve_precision,
)

__all__ = ["train_and_save", "resume_run", "resolve_device", "code_fingerprint", "differing_options", "describe_data"]


@functools.cache
def code_fingerprint() -> str:
    """A hash of the library's source (zoo/ and kernels/): a resumed run must run the same code.

    Read once per process, so it names the code this process imported even if the files are
    edited while it runs."""
    digest = hashlib.sha256()
    root = Path(__file__).resolve().parents[2]
    for path in sorted((*root.joinpath("zoo").rglob("*.py"), *root.joinpath("kernels").rglob("*.py"))):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def resolve_device(name: str) -> torch.device:
    """`auto` -> CUDA when available, else CPU; asking for CUDA without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA device is available")
    if name not in ("cpu", "cuda"):
        raise ConfigError(f"device must be auto, cpu or cuda, got {name!r}")
    return torch.device(name)


def train_and_save(
    preset: str,
    dataset: SequenceDataset,
    data_description: dict[str, Any],
    settings: FeatureSettings,
    train_config: TrainConfig,
    model_overrides: dict[str, Any],
    run_dir: Path,
    device: torch.device,
    console: Console,
    processes: Processes = SINGLE,
    on_validation: Callable[[int, float], None] | None = None,
    overwrite: bool = False,
) -> tuple[TrainingOutcome, dict[str, Any], Run]:
    """Everything `train.py` does after argument parsing: a new run in `run_dir`, checkpointed
    every epoch (`resume_run` continues it after a kill), trained by all `processes`.

    `run_dir` must be new or empty (`check_new_run_folder`; with `overwrite`, a run already
    there is deleted once the features are ready). Returns the outcome, metrics.json, and the
    run in memory (the model holds its best-epoch weights), so callers that evaluate further
    need not reopen it from disk.
    """
    intended = {
        "preset": preset,
        "train": dataclasses.asdict(train_config),
        "model": model_overrides,
        "data": {
            key: data_description[key]
            for key in ("kind", "root", "fingerprint", "sequences")
            if key in data_description
        },
        "feature_settings": settings.to_dict(),
        "code": code_fingerprint(),
    }
    check_new_run_folder(run_dir, json.loads(json.dumps(flatten_settings(intended))), overwrite)
    base = preset_config(preset, **model_overrides)
    prepared = prepare_features(dataset, base, settings, device, console, processes)
    features, backbones = prepared.features, prepared.backbones
    torch.manual_seed(train_config.seed)
    model = build_model(base.fit_to_data(dataset.num_items, features.shapes()).fit_to_backbones(prepared.loaded))
    model.start_from_backbones(prepared.loaded)
    del prepared
    check_trains_on_catalogues(model, dataset, train_config)  # before the run folder is written
    config = {
        "preset": preset,
        "model": model.config.to_dict(),
        "train": dataclasses.asdict(train_config),
        "data": _placed(data_description, run_dir),
        "feature_settings": settings.to_dict(),
        "code": code_fingerprint(),
        "threads": torch.get_num_threads(),
        "processes": processes.world_size,
        "precision": resolve_precision(train_config.precision, device),
        "features": {"side_layers": settings.side_layers, "backbones": backbones},
    }
    if processes.is_main:
        if overwrite:
            clear_run_folder(run_dir)
        write_json(run_dir / "config.json", config)
    processes.barrier()
    return _train(
        Run(run_dir, config, model, dataset, features), train_config, device, console, processes, on_validation
    )


def resume_run(
    run_dir: Path,
    device: torch.device,
    console: Console,
    given: dict[str, Any] | None = None,
    processes: Processes = SINGLE,
    on_validation: Callable[[int, float], None] | None = None,
) -> tuple[TrainingOutcome | None, dict[str, Any], Run | None]:
    """Continue the run in `run_dir` from its last checkpoint, with everything from its files
    (and as many processes as it started with: each has its own random state).

    A finished run is left as it is (its metrics.json is returned, with no outcome). `given`
    holds options from the command line as `config.json` keys (`train.epochs`, `preset`, ...);
    any that differ from the recorded ones, like a different code or data fingerprint, stop
    with one line naming the keys.
    """
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file():
        raise MissingFileError(f"{run_dir}: not a run directory (no config.json)")
    config = read_json_object(run_dir / "config.json", ("preset", "model", "train", "data", "feature_settings"))
    if CheckpointStore(run_dir).finished() and (run_dir / "metrics.json").is_file():
        console.print(f"{run_dir} finished already; nothing to resume")
        return None, read_json(run_dir / "metrics.json"), None
    differing = differing_options(config, given or {})
    settings, model_config, train_config = _recorded_settings(run_dir, config)
    dataset = recorded_dataset(config, run_dir)
    now = {
        "code": code_fingerprint(),
        "data.fingerprint": dataset.fingerprint(),
        "data.sequences": dataset.sequences_fingerprint(),
    }
    # Runs trained before users' sequences were fingerprinted record no `data.sequences`.
    differing += [
        key
        for key, value in now.items()
        if _recorded(config, key) != value and not (key == "data.sequences" and "sequences" not in config["data"])
    ]
    if config.get("processes", 1) != processes.world_size:
        differing.append(f"processes ({config.get('processes', 1)} recorded, {processes.world_size} now)")
    if differing:
        raise ConfigError(f"cannot resume {run_dir}: {', '.join(differing)} differ from its config.json")
    if config.get("threads") != torch.get_num_threads():
        console.print(
            f"note: {run_dir} ran with {config.get('threads')} threads, this process has "
            f"{torch.get_num_threads()}: the continuation will differ in the last digits"
        )
    features = prepare_features(dataset, model_config, settings, device, console, processes).features
    torch.manual_seed(train_config.seed)  # as the first start did, for a run killed before its first checkpoint
    model = build_model(model_config)
    return _train(
        Run(run_dir, config, model, dataset, features), train_config, device, console, processes, on_validation
    )


def _recorded_settings(run_dir: Path, config: dict[str, Any]) -> tuple[FeatureSettings, RecommenderConfig, TrainConfig]:
    """The feature, model and training settings a run's `config.json` records (one line when
    they no longer build: a damaged or hand-edited file)."""
    try:
        # The precision `auto` chose when the run started, whatever this machine would choose now.
        return (
            FeatureSettings.from_dict(config["feature_settings"]),
            config_from_dict(config["model"]),
            TrainConfig(**{**config["train"], "precision": config["precision"]}),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise CorruptFileError(
            f"{run_dir / 'config.json'}: its settings do not build ({error}); the file is damaged or was edited"
        ) from None


def differing_options(
    config: dict[str, Any], given: dict[str, Any], chosen_on_validation: Iterable[str] = ()
) -> list[str]:
    """The keys of `given` (dotted `config.json` keys: `train.epochs`, `model.top_k`, `preset`)
    whose values differ from what the run's `config` records.

    A finished run records the value it chose for a model setting given as `auto`; naming that
    setting in `chosen_on_validation` (the keys of its metrics.json's `chosen_on_validation`)
    makes `auto` match it."""
    chosen = {f"model.{name}" for name in chosen_on_validation}
    return [
        key for key, value in given.items() if _recorded(config, key) != value and not (value == AUTO and key in chosen)
    ]


def _recorded(config: dict[str, Any], dotted_key: str) -> Any:
    value: Any = config
    for part in dotted_key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _train(
    run: Run,
    train_config: TrainConfig,
    device: torch.device,
    console: Console,
    processes: Processes,
    on_validation: Callable[[int, float], None] | None,
) -> tuple[TrainingOutcome, dict[str, Any], Run]:
    """Train (from the run's last checkpoint, if any), then write the finished run's files (the
    main process only); the last one written marks the run finished, so nothing a killed
    process leaves looks finished."""
    model, dataset, run_dir = run.model, run.dataset, run.directory
    num_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    console.print(f"{run.config['preset']}: {num_trainable:,} trainable parameters")
    checkpoints = CheckpointStore(run_dir)
    if train_config.init_from and not checkpoints.started():
        # From the pretrained run's weights, also when a run killed before its first checkpoint resumes.
        run.config["init_from"] = initialise_from(model, Path(train_config.init_from), run.config, console)
        if processes.is_main:
            write_json(run_dir / "config.json", run.config)
    outcome = Trainer(model, dataset, run.features, train_config, device, console, processes, on_validation).fit(
        checkpoints
    )
    # Popularity's validation ranks the users the model's did (all, or the valid_users sample).
    sample = {"valid": evaluation_users(dataset.num_users, train_config.valid_users), "test": None}
    popularity_results = {
        split: evaluate_popularity(dataset, split, train_config.mask_history, users) for split, users in sample.items()
    }
    popularity = {split: result.metrics for split, result in popularity_results.items()}
    metrics: dict[str, Any] = {
        "valid": outcome.valid.metrics,
        "test": outcome.test.metrics,
        "best_epoch": outcome.best_epoch,
        "trainable_parameters": num_trainable,
        "mask_history": train_config.mask_history,
        "popularity": popularity,
    }
    if dataset.parts:
        # The metrics above are the catalogues' means; each catalogue's own, beside them.
        per_catalogue = {
            name: catalogue_metrics(dataset, result.ranks, result.users)
            for name, result in (
                ("valid", outcome.valid),
                ("test", outcome.test),
                ("popularity valid", popularity_results["valid"]),
                ("popularity test", popularity_results["test"]),
            )
        }
        metrics["catalogues"] = {
            part.label: {
                "valid": per_catalogue["valid"].get(part.label),
                "test": per_catalogue["test"][part.label],
                "popularity": {split: per_catalogue[f"popularity {split}"].get(part.label) for split in sample},
            }
            for part in dataset.parts
        }
    if outcome.choices:
        metrics["chosen_on_validation"] = outcome.choices
        run.config["model"] = model.config.to_dict()  # the chosen values, for loading, export and serving
    if not processes.is_main:
        return outcome, metrics, run
    if outcome.choices:
        write_json(run_dir / "config.json", run.config)
    save_weights(run_dir / "model.safetensors", outcome.best_state, {"preset": run.config["preset"]})
    for result in (outcome.valid, outcome.test):
        save_per_user(run_dir / f"per_user_{result.split}.json", result.user_ids(dataset), result.ranks)
    write_json(run_dir / "metrics.json", metrics)
    draw_training_curves(
        outcome.history, outcome.best_epoch, run_dir / "curves.png", title=f"{run.config['preset']} ({run_dir.name})"
    )
    checkpoints.mark_finished()
    return outcome, metrics, run


def describe_data(
    kind: str, dataset: SequenceDataset, cover_dir: str = "covers", video_dir: str = "videos"
) -> dict[str, Any]:
    """What `config.json` records about the data: enough to reload it and notice changes (each
    catalogue's record under `catalogues` for a data set over several)."""
    described = {
        "kind": kind,
        "name": dataset.name,
        "fingerprint": dataset.fingerprint(),
        "sequences": dataset.sequences_fingerprint(),
        "num_users": dataset.num_users,
        "num_items": dataset.num_items,
    }
    if dataset.parts:
        return {
            **described,
            "catalogues": [describe_data(kind, part.dataset, cover_dir, video_dir) for part in dataset.parts],
        }
    return {**described, "root": str(dataset.root.resolve()), "cover_dir": cover_dir, "video_dir": video_dir}


def _placed(description: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """`description` with each catalogue's folder also relative to the run folder (`root_from_run`),
    so that a run moved together with its data finds it."""
    if "catalogues" in description:
        return {**description, "catalogues": [_placed(each, run_dir) for each in description["catalogues"]]}
    return {**description, "root_from_run": os.path.relpath(description["root"], run_dir.resolve())}
