"""From raw data to a trained run directory: data, backbones, feature cache, training, files."""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from crossan.zoo.analysis.curves import draw_training_curves
from crossan.zoo.backbones import TEXT_MAX_TOKENS, Backbone, BackboneSpec, StateExtractor, load_backbone
from crossan.zoo.cache import build_states, cache_metadata, cache_path, check_media, open_states
from crossan.zoo.input_cache import build_inputs, input_cache_path, input_metadata, open_inputs
from crossan.zoo.data import SequenceDataset
from crossan.zoo.errors import ConfigError, MissingFileError
from crossan.zoo.features import ItemFeatures
from crossan.zoo.models import build_model, config_from_dict, preset_config
from crossan.zoo.runs import Run, recorded_dataset
from crossan.zoo.training.checkpoint import CheckpointStore, read_json, save_per_user, save_weights, write_json
from crossan.zoo.training.distributed import SINGLE, Processes
from crossan.zoo.training.evaluation import evaluate_popularity
from crossan.zoo.training.trainer import TrainConfig, Trainer, TrainingOutcome, resolve_precision

__all__ = ["FeatureSettings", "prepare_features", "train_and_save", "resume_run",
           "resolve_device", "code_fingerprint", "differing_options", "split_options"]


@dataclass(frozen=True)
class FeatureSettings:
    """How item features are produced: backbone source, per-modality overrides, caching."""

    source: str = "tiny"
    overrides: tuple[tuple[str, str], ...] = ()
    poolings: tuple[tuple[str, str], ...] = ()
    side_layers: int = 6
    text_max_tokens: int = TEXT_MAX_TOKENS
    cache_dir: Path = Path(".cache")
    batch_size: int = 32
    allow_missing_media: bool = False
    backbone_seed: int = 0

    def spec(self, modality: str) -> BackboneSpec:
        return BackboneSpec.resolve(modality, self.source, dict(self.overrides).get(modality),
                                    dict(self.poolings).get(modality), self.backbone_seed)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (recorded in `config.json`, read back by `--resume`)."""
        values = dataclasses.asdict(self)
        return {**values, "overrides": [list(p) for p in self.overrides], "poolings": [list(p) for p in self.poolings],
                "cache_dir": str(self.cache_dir)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "FeatureSettings":
        return cls(**{**values, "overrides": tuple(map(tuple, values["overrides"])),
                      "poolings": tuple(map(tuple, values["poolings"])), "cache_dir": Path(values["cache_dir"])})


def code_fingerprint() -> str:
    """A hash of the library's source (zoo/ and kernels/): a resumed run must run the same code."""
    digest = hashlib.sha256()
    root = Path(__file__).resolve().parents[1]
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


def prepare_features(dataset: SequenceDataset, modalities: tuple[str, ...], settings: FeatureSettings,
                     device: torch.device, console: Console, processes: Processes = SINGLE,
                     stored: str = "states") -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Backbone]]:
    """Per-modality item features, built on first use (over all `processes`): the backbones'
    cached states (`stored="states"`), or their stored inputs (`"inputs"`: token ids, pixels, for
    models that run the backbones themselves). Returns the features by input name, a description
    of each backbone, and, for `"inputs"`, the loaded backbones (the model starts from them)."""
    dataset.require_modalities(modalities)
    for modality in modalities:  # fail on missing media before spending time on any backbone
        check_media(dataset, modality, settings.allow_missing_media)
    features: dict[str, torch.Tensor] = {}
    described: dict[str, Any] = {}
    loaded: dict[str, Backbone] = {}
    for modality in modalities:
        backbone = load_backbone(settings.spec(modality))
        extractor = StateExtractor(backbone, settings.side_layers, settings.text_max_tokens)
        if stored == "inputs":
            metadata = input_metadata(dataset, extractor)
            path = input_cache_path(settings.cache_dir, metadata, modality)
            inputs = open_inputs(path, metadata)
            if processes.any(inputs is None):
                with _progress(f"preparing {modality} inputs", dataset.num_items, console) as advance:
                    inputs = build_inputs(dataset, extractor, path, settings.batch_size, settings.allow_missing_media,
                                          on_batch=advance, processes=processes)
                console.print(f"stored {modality} inputs -> {path}")
            features.update({f"{modality}_{name}": inputs[name] for name in extractor.input_names})
            loaded[modality] = backbone
        else:
            metadata = cache_metadata(dataset, extractor)
            path = cache_path(settings.cache_dir, metadata, modality)
            cached = open_states(path, metadata)
            # Every process builds (its share) if any lacks the file, so they all meet at its barriers.
            if processes.any(cached is None):
                started = time.perf_counter()
                with _progress(f"caching {modality}", len(processes.shard(dataset.num_items)), console) as advance:
                    cached = build_states(dataset, extractor, path, settings.batch_size, settings.allow_missing_media,
                                          device, on_batch=advance, processes=processes)
                console.print(f"cached {modality} states {tuple(cached.shape)} with "
                              f"{backbone.identity['architecture']} in {time.perf_counter() - started:.1f}s -> {path}")
            else:
                console.print(f"using cached {modality} states {tuple(cached.shape)} from {path}")
            features[modality] = cached
        described[modality] = {**backbone.identity, "preprocessing": extractor.preprocessing(),
                               "kept_indices": extractor.indices, "cache_file": str(path), "stored": stored}
    return features, described, loaded


@contextlib.contextmanager
def _progress(label: str, total: int, console: Console) -> Iterator[Callable[[int], None]]:
    """A transient progress bar over `total` items; yields the function that advances it."""
    with Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), console=console, transient=True) as progress:
        task = progress.add_task(label, total=total)
        yield lambda n: progress.advance(task, n)


def train_and_save(preset: str, dataset: SequenceDataset, data_description: dict[str, Any],
                   settings: FeatureSettings, train_config: TrainConfig, model_overrides: dict[str, Any],
                   run_dir: Path, device: torch.device, console: Console,
                   processes: Processes = SINGLE) -> tuple[TrainingOutcome, dict[str, Any], Run]:
    """Everything `train.py` does after argument parsing: a new run in `run_dir`, checkpointed
    every epoch (`resume_run` continues it after a kill), trained by all `processes`.

    Returns the outcome, metrics.json, and the run in memory (the model holds its best-epoch
    weights), so callers that evaluate further need not reopen it from disk.
    """
    base = preset_config(preset, **model_overrides)
    states, backbones, loaded = prepare_features(dataset, base.item_features(), settings, device, console, processes,
                                                 base.stored_features)
    features = ItemFeatures(dataset.num_items, states, device, with_rows=base.reads_item_rows)
    torch.manual_seed(train_config.seed)
    model = build_model(base.fit_to_data(dataset.num_items, features.shapes()).fit_to_backbones(loaded))
    model.start_from_backbones(loaded)
    del loaded
    config = {"preset": preset, "model": model.config.to_dict(), "train": dataclasses.asdict(train_config),
              "data": data_description, "feature_settings": settings.to_dict(), "code": code_fingerprint(),
              "threads": torch.get_num_threads(), "processes": processes.world_size,
              "precision": resolve_precision(train_config.precision, device),
              "features": {"side_layers": settings.side_layers, "backbones": backbones}}
    if processes.is_main:
        write_json(run_dir / "config.json", config)
    return _train(Run(run_dir, config, model, dataset, features), train_config, device, console, processes)


def resume_run(run_dir: Path, device: torch.device, console: Console, given: dict[str, Any] | None = None,
               processes: Processes = SINGLE) -> tuple[TrainingOutcome | None, dict[str, Any], Run | None]:
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
    config = read_json(run_dir / "config.json")
    if CheckpointStore(run_dir).finished() and (run_dir / "metrics.json").is_file():
        console.print(f"{run_dir} finished already; nothing to resume")
        return None, read_json(run_dir / "metrics.json"), None
    differing = differing_options(config, given or {})
    settings = FeatureSettings.from_dict(config["feature_settings"])
    dataset = recorded_dataset(config)
    differing += [key for key, now in (("code", code_fingerprint()), ("data.fingerprint", dataset.fingerprint()))
                  if _recorded(config, key) != now]
    if config.get("processes", 1) != processes.world_size:
        differing.append(f"processes ({config.get('processes', 1)} recorded, {processes.world_size} now)")
    if differing:
        raise ConfigError(f"cannot resume {run_dir}: {', '.join(differing)} differ from its config.json")
    if config.get("threads") != torch.get_num_threads():
        console.print(f"note: {run_dir} ran with {config.get('threads')} threads, this process has "
                      f"{torch.get_num_threads()}: the continuation will differ in the last digits")
    model_config = config_from_dict(config["model"])
    states, _, _ = prepare_features(dataset, model_config.item_features(), settings, device, console, processes,
                                    model_config.stored_features)
    features = ItemFeatures(dataset.num_items, states, device, with_rows=model_config.reads_item_rows)
    # The precision `auto` chose when the run started, whatever this machine would choose now.
    train_config = TrainConfig(**{**config["train"], "precision": config["precision"]})
    torch.manual_seed(train_config.seed)  # as the first start did, for a run killed before its first checkpoint
    model = build_model(model_config)
    return _train(Run(run_dir, config, model, dataset, features), train_config, device, console, processes)


def differing_options(config: dict[str, Any], given: dict[str, Any]) -> list[str]:
    """The keys of `given` (dotted `config.json` keys: `train.epochs`, `model.top_k`, `preset`)
    whose values differ from what the run's `config` records."""
    return [key for key, value in given.items() if _recorded(config, key) != value]


def _recorded(config: dict[str, Any], dotted_key: str) -> Any:
    value: Any = config
    for part in dotted_key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _train(run: Run, train_config: TrainConfig, device: torch.device, console: Console,
           processes: Processes) -> tuple[TrainingOutcome, dict[str, Any], Run]:
    """Train (from the run's last checkpoint, if any), then write the finished run's files (the
    main process only); the last one written marks the run finished, so nothing a killed
    process leaves looks finished."""
    model, dataset, run_dir = run.model, run.dataset, run.directory
    num_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    console.print(f"{run.config['preset']}: {num_trainable:,} trainable parameters")
    checkpoints = CheckpointStore(run_dir)
    outcome = Trainer(model, dataset, run.features, train_config, device, console, processes).fit(checkpoints)
    popularity = {split: evaluate_popularity(dataset, split, train_config.mask_history).metrics
                  for split in ("valid", "test")}
    metrics = {"valid": outcome.valid.metrics, "test": outcome.test.metrics, "best_epoch": outcome.best_epoch,
               "trainable_parameters": num_trainable, "mask_history": train_config.mask_history,
               "popularity": popularity}
    if not processes.is_main:
        return outcome, metrics, run
    save_weights(run_dir / "model.safetensors", outcome.best_state, {"preset": run.config["preset"]})
    for result in (outcome.valid, outcome.test):
        save_per_user(run_dir / f"per_user_{result.split}.json", dataset.user_ids, result.ranks)
    write_json(run_dir / "metrics.json", metrics)
    draw_training_curves(outcome.history, outcome.best_epoch, run_dir / "curves.png",
                         title=f"{run.config['preset']} ({run_dir.name})")
    checkpoints.mark_finished()
    return outcome, metrics, run


def describe_data(kind: str, dataset: SequenceDataset, cover_dir: str = "covers",
                  video_dir: str = "videos") -> dict[str, Any]:
    """What `config.json` records about the data: enough to reload it and notice changes."""
    return {"kind": kind, "root": str(dataset.root.resolve()), "name": dataset.name,
            "fingerprint": dataset.fingerprint(), "num_users": dataset.num_users, "num_items": dataset.num_items,
            "cover_dir": cover_dir, "video_dir": video_dir}


def split_options(values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Sort `{field: value}` into training-config fields and model-config overrides (the model
    fields are checked when the preset's config is built)."""
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    train = {k: v for k, v in values.items() if k in train_fields}
    return train, {k: v for k, v in values.items() if k not in train_fields}


def parse_assignments(pairs: list[str], what: str) -> dict[str, str]:
    """`KEY=VALUE` strings -> dict; a malformed pair is a clear error."""
    parsed: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key or not value:
            raise ConfigError(f"{what} expects KEY=VALUE, got {pair!r}")
        parsed[key.strip()] = value.strip()
    return parsed


def parse_value(text: str) -> Any:
    """JSON when it parses (numbers, booleans, lists), else the plain string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text
