"""From raw data to a trained run directory: data, backbones, feature cache, training, files."""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from zoo.backbones import TEXT_MAX_TOKENS, BackboneSpec, StateExtractor, load_backbone
from zoo.cache import build_states, cache_metadata, cache_path, check_media, open_states
from zoo.data import SequenceDataset
from zoo.errors import ConfigError
from zoo.features import ItemFeatures
from zoo.models.base import Recommender
from zoo.registry import build_model, preset_config
from zoo.runs import Run
from zoo.training.checkpoint import save_per_user, save_weights, write_json
from zoo.training.evaluation import evaluate_popularity
from zoo.training.trainer import TrainConfig, Trainer, TrainingOutcome

__all__ = ["FeatureSettings", "prepare_features", "configure_model", "train_and_save", "resolve_device"]


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
                     device: torch.device, console: Console) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Cached states per modality (built on first use) and a description of each backbone."""
    dataset.require_modalities(modalities)
    for modality in modalities:  # fail on missing media before spending time on any backbone
        check_media(dataset, modality, settings.allow_missing_media)
    states: dict[str, torch.Tensor] = {}
    described: dict[str, Any] = {}
    for modality in modalities:
        backbone = load_backbone(settings.spec(modality))
        extractor = StateExtractor(backbone, settings.side_layers, settings.text_max_tokens)
        metadata = cache_metadata(dataset, extractor)
        path = cache_path(settings.cache_dir, metadata, modality)
        cached = open_states(path, metadata)
        if cached is None:
            with Progress(TextColumn(f"[bold]caching {modality}"), BarColumn(), MofNCompleteColumn(),
                          TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=True) as progress:
                task = progress.add_task(modality, total=dataset.num_items)
                started = time.perf_counter()
                cached = build_states(dataset, extractor, path, settings.batch_size, settings.allow_missing_media,
                                      device, on_batch=lambda n: progress.advance(task, n))
            console.print(f"cached {modality} states {tuple(cached.shape)} with {backbone.identity['architecture']} "
                          f"in {time.perf_counter() - started:.1f}s -> {path}")
        else:
            console.print(f"using cached {modality} states {tuple(cached.shape)} from {path}")
        states[modality] = cached
        described[modality] = {**backbone.identity, "preprocessing": extractor.preprocessing(),
                               "kept_indices": extractor.indices, "cache_file": str(path)}
        del backbone, extractor
    return states, described


def configure_model(preset: str, dataset: SequenceDataset, feature_shapes: dict[str, tuple[int, int]],
                    overrides: dict[str, Any]) -> Recommender:
    """Build the preset's model fitted to this data set's catalogue and cached feature shapes."""
    return build_model(preset_config(preset, **overrides).fit_to_data(dataset.num_items, feature_shapes))


def train_and_save(preset: str, dataset: SequenceDataset, data_description: dict[str, Any],
                   settings: FeatureSettings, train_config: TrainConfig, model_overrides: dict[str, Any],
                   run_dir: Path, device: torch.device,
                   console: Console) -> tuple[TrainingOutcome, dict[str, Any], Run]:
    """Everything `train.py` does after argument parsing.

    Returns the outcome, metrics.json, and the run in memory (the model holds its best-epoch
    weights), so callers that evaluate further need not reopen it from disk.
    """
    modalities = preset_config(preset, **model_overrides).item_features()
    states, backbones = prepare_features(dataset, modalities, settings, device, console)
    features = ItemFeatures(dataset.num_items, states, device)
    torch.manual_seed(train_config.seed)
    model = configure_model(preset, dataset, features.shapes(), model_overrides)
    num_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    console.print(f"{preset}: {num_trainable:,} trainable parameters")
    config = {"preset": preset, "model": model.config.to_dict(), "train": dataclasses.asdict(train_config),
              "data": data_description, "features": {"side_layers": settings.side_layers, "backbones": backbones}}
    write_json(run_dir / "config.json", config)
    trainer = Trainer(model, dataset, features, train_config, device, console)
    started = time.perf_counter()
    outcome = trainer.fit()
    train_seconds = time.perf_counter() - started
    save_weights(run_dir / "model.safetensors", outcome.best_state, {"preset": preset})
    popularity = {split: evaluate_popularity(dataset, split, train_config.mask_history).metrics
                  for split in ("valid", "test")}
    metrics = {"valid": outcome.valid.metrics, "test": outcome.test.metrics, "best_epoch": outcome.best_epoch,
               "trainable_parameters": num_trainable, "train_seconds": round(train_seconds, 2),
               "mask_history": train_config.mask_history, "popularity": popularity}
    for result in (outcome.valid, outcome.test):
        save_per_user(run_dir / f"per_user_{result.split}.json", dataset.user_ids, result.ranks)
    write_json(run_dir / "trainer_state.json", {"best_epoch": outcome.best_epoch, "history": outcome.history,
                                                "finished": True})
    write_json(run_dir / "metrics.json", metrics)
    return outcome, metrics, Run(run_dir, config, model, dataset, features)


def describe_data(kind: str, dataset: SequenceDataset, cover_dir: str = "covers",
                  video_dir: str = "videos") -> dict[str, Any]:
    """What `config.json` records about the data: enough to reload it and notice changes."""
    return {"kind": kind, "root": str(dataset.root.resolve()), "name": dataset.name,
            "fingerprint": dataset.fingerprint(), "num_users": dataset.num_users, "num_items": dataset.num_items,
            "cover_dir": cover_dir, "video_dir": video_dir}


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
