"""The one entry point of item features: build or open whatever a model config asks for.

For each modality it loads the backbone, asks the state cache (or the stored-input file) for a
file with matching metadata, has the extractor compute the rows when there is none, stores
them, and returns an `ItemFeatures` over the memory-mapped result. The storage modules never
call the extractor; the extractor never calls them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from crossan.zoo.backbones import Backbone, StateExtractor, load_backbone
from crossan.zoo.core.distributed import SINGLE, Processes
from crossan.zoo.core.errors import CorruptFileError, MissingFileError
from crossan.zoo.core.finite import require_finite_rows
from crossan.zoo.core.progress import progress_bar
from crossan.zoo.data.dataset import SequenceDataset
from crossan.zoo.data.errors import DataError
from crossan.zoo.features import inputs as stored_inputs
from crossan.zoo.features import states as state_cache
from crossan.zoo.features.settings import FeatureSettings
from crossan.zoo.features.store import ItemFeatures
from crossan.zoo.models.config import RecommenderConfig, StoredFeatures

__all__ = [
    "LOCATION_KEYS",
    "PreparedFeatures",
    "prepare_features",
    "open_recorded_features",
    "state_metadata",
    "input_metadata",
    "build_state_cache",
    "extract_states",
    "gather_stored_inputs",
    "check_media",
]


@dataclass
class PreparedFeatures:
    """What `prepare_features` returns: the features, a record of each backbone for `config.json`
    (`features.backbones`), and, for models that run their backbones, the loaded backbones."""

    features: ItemFeatures
    backbones: dict[str, Any]
    loaded: dict[str, Backbone]


def prepare_features(
    dataset: SequenceDataset,
    config: RecommenderConfig,
    settings: FeatureSettings,
    device: torch.device,
    console: Console,
    processes: Processes = SINGLE,
) -> PreparedFeatures:
    """Item features for `config` (its `backbone_modalities()`, as `stored_features` says:
    cached backbone states, or stored backbone inputs for the uncached models), built on first use
    over all `processes`, gathered to `device`. A model with no modalities gets item rows."""
    if dataset.parts:
        return _prepare_by_catalogue(dataset, config, settings, device, console, processes)
    modalities, stored = config.backbone_modalities(), config.stored_features
    dataset.require_modalities(modalities)
    for modality in modalities:  # fail on missing media before spending time on any backbone
        check_media(dataset, modality, settings.allow_missing_media)
    tensors: dict[str, torch.Tensor] = {}
    described: dict[str, Any] = {}
    loaded: dict[str, Backbone] = {}
    for modality in modalities:
        backbone = load_backbone(settings.spec(modality))
        extractor = StateExtractor(backbone, settings.side_layers, settings.text_max_tokens)
        if stored is StoredFeatures.INPUTS:
            path, opened = _stored_inputs(dataset, extractor, settings, console, processes)
            tensors.update({f"{modality}_{name}": opened[name] for name in extractor.input_names})
            loaded[modality] = backbone
        else:
            path, tensors[modality] = _cached_states(dataset, extractor, settings, device, console, processes)
        described[modality] = {
            **backbone.identity,
            "preprocessing": extractor.preprocessing(),
            "kept_indices": extractor.indices,
            "cache_file": str(Path(path).resolve()),
            "cache_entry": Path(path).relative_to(settings.cache_dir).as_posix(),
            "stored": stored.value,
        }
    return PreparedFeatures(
        ItemFeatures(dataset.num_items, tensors, device, with_rows=config.reads_item_rows), described, loaded
    )


LOCATION_KEYS = ("cache_file", "cache_entry", "parts")
"""What `prepare_features` records of a backbone that says where its cache is, not what it computes."""


def _prepare_by_catalogue(
    dataset: SequenceDataset,
    config: RecommenderConfig,
    settings: FeatureSettings,
    device: torch.device,
    console: Console,
    processes: Processes,
) -> PreparedFeatures:
    """A combined data set's features: each catalogue's from its own cache (the one a run on
    that catalogue alone uses), end to end. Each backbone's record names every catalogue's file
    under `parts`."""
    prepared = [prepare_features(part.dataset, config, settings, device, console, processes) for part in dataset.parts]
    described = {
        modality: {
            **{key: value for key, value in first.items() if key not in LOCATION_KEYS},
            "parts": [
                {
                    "catalogue": part.label,
                    **{key: each.backbones[modality][key] for key in ("cache_file", "cache_entry")},
                }
                for part, each in zip(dataset.parts, prepared, strict=True)
            ],
        }
        for modality, first in prepared[0].backbones.items()
    }
    return PreparedFeatures(
        ItemFeatures.concatenated([each.features for each in prepared]), described, prepared[0].loaded
    )


def open_recorded_features(
    backbones: dict[str, Any],
    num_items: int | None,
    device: torch.device | str,
    with_rows: bool,
    cache_dir: Path | None = None,
    full_check: bool = False,
) -> ItemFeatures:
    """The features a trained run used, from the files its `config.json` records
    (`features.backbones`, as `prepare_features` described them); nothing is rebuilt.

    A file is looked for under `cache_dir` when given (a cache moved with the run), else where
    the run recorded it. Cached states are checked for NaN and infinities: every row with
    `full_check`, else a sample of rows (a cheap check on every open). A run over several
    catalogues records a file per catalogue (`parts`), read end to end."""
    if any("parts" in backbone for backbone in backbones.values()):
        num_parts = len(next(iter(backbones.values()))["parts"])
        per_catalogue = [
            {
                modality: {**{k: v for k, v in backbone.items() if k != "parts"}, **backbone["parts"][index]}
                for modality, backbone in backbones.items()
            }
            for index in range(num_parts)
        ]
        parts = [open_recorded_features(part, None, device, with_rows, cache_dir, full_check) for part in per_catalogue]
        features = ItemFeatures.concatenated(parts)
        if num_items is not None and features.num_items != num_items:
            raise CorruptFileError(
                f"the cached features of the run's {num_parts} catalogues hold {features.num_items} items, "
                f"its data sets have {num_items}"
            )
        return features
    tensors: dict[str, torch.Tensor] = {}
    for modality, backbone in backbones.items():
        cache_file = Path(backbone["cache_file"])
        if cache_dir is not None and "cache_entry" in backbone:
            cache_file = Path(cache_dir) / backbone["cache_entry"]
        stored = backbone.get("stored", StoredFeatures.STATES.value)
        hint = "" if cache_dir is not None else "give --cache-dir where the cache is now, or "
        missing = MissingFileError(
            f"{cache_file}: cached {modality} {stored} are missing or unreadable; {hint}"
            f"rerun train.py with the same options to rebuild them"
        )
        if stored == StoredFeatures.STATES.value:
            states = state_cache.open_states(cache_file)
            if states is None:
                raise missing
            if num_items is not None and states.shape[0] != num_items:
                raise CorruptFileError(
                    f"{cache_file}: holds {states.shape[0]} items' {modality} states, the "
                    f"run's data set has {num_items}"
                )
            rows = None if full_check else sample_rows(states.shape[0])
            require_finite_rows(states, f"{cache_file} ({modality} states)", rows)
            tensors[modality] = states
        else:
            inputs = stored_inputs.open_inputs(cache_file)
            if inputs is None:
                raise missing
            tensors.update({f"{modality}_{name}": tensor for name, tensor in inputs.items()})
    counts = {tensor.shape[0] for tensor in tensors.values()}
    return ItemFeatures(num_items if num_items is not None else counts.pop(), tensors, device, with_rows=with_rows)


OPEN_CHECK_ROWS = 4096
"""Rows of a cache checked for NaN on every open: all of a small cache, a sample of a big one."""


def sample_rows(num_rows: int) -> torch.Tensor | None:
    """Every row (None) up to `OPEN_CHECK_ROWS`, else that many evenly spread rows."""
    if num_rows <= OPEN_CHECK_ROWS:
        return None
    return torch.linspace(0, num_rows - 1, OPEN_CHECK_ROWS).long()


def _cached_states(
    dataset: SequenceDataset,
    extractor: StateExtractor,
    settings: FeatureSettings,
    device: torch.device,
    console: Console,
    processes: Processes,
) -> tuple[Path, torch.Tensor]:
    """The modality's cache file and its mapped states, built first if no process has it."""
    modality = extractor.modality
    metadata = state_metadata(dataset, extractor)
    path = state_cache.cache_path(settings.cache_dir, metadata, modality)
    cached = state_cache.open_states(path, metadata)
    # Every process builds (its share) if any lacks the file, so they all meet at its barriers.
    if not processes.any(cached is None):
        assert cached is not None  # no process lacks the file, this one included
        require_finite_rows(cached, f"{path} ({modality} states)", sample_rows(cached.shape[0]))
        console.print(f"using cached {modality} states {tuple(cached.shape)} from {path}")
        return path, cached
    started = time.perf_counter()
    with progress_bar(f"caching {modality}", len(processes.shard(dataset.num_items)), console) as advance:
        cached = build_state_cache(
            dataset, extractor, path, settings.batch_size, settings.allow_missing_media, device, advance, processes
        )
    console.print(
        f"cached {modality} states {tuple(cached.shape)} with "
        f"{extractor.backbone.identity['architecture']} in {time.perf_counter() - started:.1f}s -> {path}"
    )
    return path, cached


def build_state_cache(
    dataset: SequenceDataset,
    extractor: StateExtractor,
    path: Path,
    batch_size: int = 32,
    allow_missing_media: bool = False,
    device: torch.device | str = "cpu",
    on_batch: Callable[[int], None] | None = None,
    processes: Processes = SINGLE,
) -> torch.Tensor:
    """Run the backbone over (each process's share of) the catalogue, write the cache, map it.
    Missing media rows (when allowed) are zero-filled; `on_batch(n)` reports progress."""
    missing = check_media(dataset, extractor.modality, allow_missing_media)
    share = extract_states(
        extractor, dataset, processes.shard(dataset.num_items), batch_size, missing, device, on_batch
    )
    return state_cache.save_states(path, share, state_metadata(dataset, extractor), processes)


def extract_states(
    extractor: StateExtractor,
    dataset: SequenceDataset,
    rows: range,
    batch_size: int = 32,
    missing: Collection[int] = frozenset(),
    device: torch.device | str = "cpu",
    on_batch: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """States `[len(rows), S, W]` (float16) of catalogue `rows`, a batch at a time; rows in `missing`
    stay zero. `on_batch(n)` reports progress."""
    num_states, width = extractor.output_shape
    states = torch.zeros(len(rows), num_states, width, dtype=torch.float16)
    # As an nn.Module: transformers' `@wraps(nn.Module.to)` hides the bound method's signature from mypy.
    model: torch.nn.Module = extractor.backbone.model
    model.to(device)
    for start in range(rows.start, rows.stop, batch_size):
        batch_rows = [r for r in range(start, min(start + batch_size, rows.stop)) if r not in missing]
        if batch_rows:
            encoded = extractor.encode_rows(dataset, batch_rows, device)
            states[torch.tensor(batch_rows) - rows.start] = encoded.to(torch.float16).cpu()
        if on_batch is not None:
            on_batch(min(batch_size, rows.stop - start))
    # A backbone whose output overflows float16 (or is NaN) must not leave a cache that trains.
    require_finite_rows(
        states,
        f"{extractor.modality} states computed by "
        f"{extractor.backbone.identity['architecture']} (float16 overflow?; not cached)",
    )
    return states


def gather_stored_inputs(
    extractor: StateExtractor,
    dataset: SequenceDataset,
    batch_size: int = 32,
    missing: Collection[int] = frozenset(),
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, torch.Tensor]:
    """Every item's backbone inputs as `[N, ...]` tensors in their stored dtypes, a batch at a
    time; rows in `missing` stay zero."""
    tensors: dict[str, torch.Tensor] = {}
    for start in range(0, dataset.num_items, batch_size):
        rows = [r for r in range(start, min(start + batch_size, dataset.num_items)) if r not in missing]
        if rows:
            for name, value in extractor.stored_input_rows(dataset, rows).items():
                value = value.to(stored_inputs.STORED_DTYPES[name])
                if name not in tensors:
                    tensors[name] = torch.zeros(dataset.num_items, *value.shape[1:], dtype=value.dtype)
                tensors[name][torch.tensor(rows)] = value
        if on_batch is not None:
            on_batch(min(batch_size, dataset.num_items - start))
    return tensors


def _stored_inputs(
    dataset: SequenceDataset,
    extractor: StateExtractor,
    settings: FeatureSettings,
    console: Console,
    processes: Processes,
) -> tuple[Path, dict[str, torch.Tensor]]:
    """The modality's stored-input file and its mapped tensors; the main process prepares them
    (tokenising and resizing are cheap next to a backbone) while the others wait."""
    modality = extractor.modality
    metadata = input_metadata(dataset, extractor)
    path = stored_inputs.input_cache_path(settings.cache_dir, metadata, modality)
    opened = stored_inputs.open_inputs(path, metadata)
    if not processes.any(opened is None):
        assert opened is not None  # no process lacks the file, this one included
        return path, opened
    tensors = None
    if processes.is_main:
        missing = check_media(dataset, modality, settings.allow_missing_media)
        with progress_bar(f"preparing {modality} inputs", dataset.num_items, console) as advance:
            tensors = gather_stored_inputs(extractor, dataset, settings.batch_size, missing, advance)
    opened = stored_inputs.save_inputs(path, tensors, metadata, processes)
    console.print(f"stored {modality} inputs -> {path}")
    return path, opened


def state_metadata(dataset: SequenceDataset, extractor: StateExtractor) -> dict[str, str]:
    """The metadata a valid state-cache file for this data set and extractor must carry."""
    return {
        "format_version": state_cache.FORMAT_VERSION,
        "backbone": json.dumps(extractor.backbone.identity, sort_keys=True),
        "kept_indices": json.dumps(extractor.indices),
        "preprocessing": json.dumps(extractor.preprocessing(), sort_keys=True, default=str),
        **_dataset_metadata(dataset),
    }


def input_metadata(dataset: SequenceDataset, extractor: StateExtractor) -> dict[str, str]:
    """The metadata a valid stored-input file for this data set and processor must carry."""
    return {
        "format_version": stored_inputs.FORMAT_VERSION,
        "kind": "backbone inputs",
        "processor": json.dumps(extractor.preprocessing(), sort_keys=True, default=str),
        "tokenizer": json.dumps(getattr(extractor.backbone.processor, "name_or_path", ""), default=str),
        **_dataset_metadata(dataset),
    }


def _dataset_metadata(dataset: SequenceDataset) -> dict[str, str]:
    """The data set entries of a file's metadata: a file of another data set never loads."""
    return {"dataset": dataset.name, "dataset_fingerprint": dataset.fingerprint(), "num_items": str(dataset.num_items)}


def check_media(dataset: SequenceDataset, modality: str, allow_missing: bool) -> set[int]:
    """Rows whose media file is missing; an error unless `allow_missing` (then zero-filled)."""
    paths = {"image": dataset.cover_paths, "video": dataset.video_paths, "audio": dataset.video_paths}.get(modality)
    if paths is None:
        return set()
    missing = {row for row, path in enumerate(paths) if not path.is_file()}
    if missing and not allow_missing:
        first = paths[min(missing)]
        raise DataError(
            f"missing {modality} file ({len(missing)} of {len(paths)} items lack one; "
            f"--allow-missing-media zero-fills them)",
            first,
        )
    return missing
