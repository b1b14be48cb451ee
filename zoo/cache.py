"""Feature cache: per-layer backbone states of every item, computed once, memory-mapped after.

One safetensors file per (data set, modality, backbone): tensor `states`
`[num_items, num_states, width]` in float16, rows in catalogue order, with metadata naming
the backbone (id and weight hash), the kept indices, the preprocessing and the data set
fingerprint. A file whose metadata differs from what is asked for is rebuilt. Files are
written to a temporary name and renamed, so a crash never leaves a file that loads.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from crossan.zoo.atomic import atomic_write
from crossan.zoo.backbones.extractor import StateExtractor
from crossan.zoo.data.dataset import SequenceDataset
from crossan.zoo.data.errors import DataError
from crossan.zoo.training.distributed import SINGLE, Processes

__all__ = ["FORMAT_VERSION", "cache_metadata", "dataset_metadata", "cache_path", "open_states", "build_states",
           "extract_rows", "check_media"]

FORMAT_VERSION = "1"
TENSOR_NAME = "states"


def cache_metadata(dataset: SequenceDataset, extractor: StateExtractor) -> dict[str, str]:
    """The metadata a valid cache file for this data set and extractor must carry."""
    return {
        "format_version": FORMAT_VERSION,
        "backbone": json.dumps(extractor.backbone.identity, sort_keys=True),
        "kept_indices": json.dumps(extractor.indices),
        "preprocessing": json.dumps(extractor.preprocessing(), sort_keys=True, default=str),
        **dataset_metadata(dataset),
    }


def dataset_metadata(dataset: SequenceDataset) -> dict[str, str]:
    """The data set entries of a cache file's metadata: a file of another data set never loads."""
    return {"dataset": dataset.name, "dataset_fingerprint": dataset.fingerprint(),
            "num_items": str(dataset.num_items)}


def cache_path(cache_dir: Path, metadata: dict[str, str], modality: str, folder: str = "features") -> Path:
    """`<cache_dir>/<folder>/<data set>/<modality>-<hash of the metadata>.safetensors`."""
    key = hashlib.sha256(json.dumps(metadata, sort_keys=True).encode()).hexdigest()[:12]
    return Path(cache_dir) / folder / metadata["dataset"] / f"{modality}-{key}.safetensors"


def open_states(path: Path, expected: dict[str, str] | None = None) -> torch.Tensor | None:
    """Memory-map the cached states `[N, S, W]` (float16); None when missing, unreadable, truncated,
    of another dtype or stale (metadata other than `expected`)."""
    if not path.is_file():
        return None
    try:
        # safe_open rejects a header that does not cover the file exactly (torn or padded files)
        # and tensor offsets that disagree with their dtype and shape.
        with safe_open(path, framework="pt") as handle:
            if expected is not None and handle.metadata() != expected:
                return None
            if handle.get_slice(TENSOR_NAME).get_dtype() != "F16":
                return None
            # A private (copy-on-write) map of the file that outlives the handle: pages are read
            # lazily, and writes to the tensor stay in this process, never reaching the file.
            return handle.get_tensor(TENSOR_NAME)
    except (OSError, SafetensorError):
        return None


def check_media(dataset: SequenceDataset, modality: str, allow_missing: bool) -> set[int]:
    """Rows whose media file is missing; an error unless `allow_missing` (then zero-filled)."""
    paths = {"image": dataset.cover_paths, "video": dataset.video_paths, "audio": dataset.video_paths}.get(modality)
    if paths is None:
        return set()
    missing = {row for row, path in enumerate(paths) if not path.is_file()}
    if missing and not allow_missing:
        first = paths[min(missing)]
        raise DataError(f"missing {modality} file ({len(missing)} of {len(paths)} items lack one; "
                        f"--allow-missing-media zero-fills them)", first)
    return missing


def build_states(dataset: SequenceDataset, extractor: StateExtractor, path: Path, batch_size: int = 32,
                 allow_missing_media: bool = False, device: torch.device | str = "cpu",
                 on_batch: Callable[[int], None] | None = None, processes: Processes = SINGLE) -> torch.Tensor:
    """Run the backbone over the whole catalogue, write the cache atomically, map it.

    Missing media rows (when allowed) are zero-filled. `on_batch(n)` reports progress. Over
    several processes each extracts its share of the items into a part file (written
    atomically); after all have finished, the main process joins the parts into the cache file
    (atomically) and removes them, while the others wait. A process that dies on the way leaves
    at most complete part files, never a cache file.
    """
    metadata = cache_metadata(dataset, extractor)
    missing = check_media(dataset, extractor.modality, allow_missing_media)
    share = processes.shard(dataset.num_items)
    states = extract_rows(dataset, extractor, share, batch_size, missing, device, on_batch)
    if not processes.distributed:
        write_states(path, states, metadata)
    else:
        parts = [_part_path(path, rank, processes.world_size) for rank in range(processes.world_size)]
        write_states(parts[processes.rank], states, metadata)
        processes.barrier()
        if processes.is_main:
            joined = torch.cat([_read_part(part, metadata) for part in parts])
            write_states(path, joined, metadata)
            for part in parts:
                part.unlink()
        processes.barrier()
    mapped = open_states(path, metadata)
    assert mapped is not None, f"{path} was just written but does not load"
    return mapped


def extract_rows(dataset: SequenceDataset, extractor: StateExtractor, rows: range, batch_size: int = 32,
                 missing: set[int] = frozenset(), device: torch.device | str = "cpu",
                 on_batch: Callable[[int], None] | None = None) -> torch.Tensor:
    """States `[len(rows), S, W]` (float16) of catalogue `rows`; those in `missing` stay zero."""
    num_states, width = extractor.output_shape
    states = torch.zeros(len(rows), num_states, width, dtype=torch.float16)
    extractor.backbone.model.to(device)
    for start in range(rows.start, rows.stop, batch_size):
        batch_rows = [r for r in range(start, min(start + batch_size, rows.stop)) if r not in missing]
        if batch_rows:
            encoded = extractor.encode([extractor.read_item(dataset, r) for r in batch_rows], device)
            states[torch.tensor(batch_rows) - rows.start] = encoded.to(torch.float16).cpu()
        if on_batch is not None:
            on_batch(min(batch_size, rows.stop - start))
    if not torch.isfinite(states).all():
        raise RuntimeError(f"the {extractor.modality} backbone produced non-finite features (float16 overflow?)")
    return states


def _part_path(path: Path, rank: int, world_size: int) -> Path:
    """Where process `rank` of `world_size` leaves its share of the cache file `path`."""
    return path.with_name(f".{path.stem}.part-{rank}-of-{world_size}{path.suffix}")


def _read_part(part: Path, metadata: dict[str, str]) -> torch.Tensor:
    states = open_states(part, metadata)
    if states is None:
        raise RuntimeError(f"{part}: a process's share of the feature cache is missing or damaged")
    return states


def write_states(path: Path, states: torch.Tensor, metadata: dict[str, str]) -> None:
    """Atomically write `states` with `metadata`."""
    atomic_write(path, lambda temporary: save_file({TENSOR_NAME: states.contiguous()}, temporary, metadata=metadata))
