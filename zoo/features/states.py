"""The state cache: per-layer backbone states of every item, computed once, memory-mapped after.

One safetensors file per (data set, modality, backbone): tensor `states`
`[num_items, num_states, width]` in float16, rows in catalogue order, with metadata naming
the backbone (id and weight hash), the kept indices, the preprocessing and the data set
fingerprint (`crossan.zoo.features.prepare.state_metadata`). A file whose metadata differs from
what is asked for is rebuilt. Files are written to a temporary name and renamed, so a crash
never leaves a file that loads. This module stores and maps tensors; it runs no backbone.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from crossan.zoo.core.atomic import atomic_write
from crossan.zoo.core.distributed import SINGLE, Processes

__all__ = ["FORMAT_VERSION", "cache_path", "open_states", "save_states", "write_states"]

FORMAT_VERSION = "1"
TENSOR_NAME = "states"


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


def save_states(
    path: Path, share: torch.Tensor, metadata: dict[str, str], processes: Processes = SINGLE
) -> torch.Tensor:
    """Write the cache file from each process's `share` of the rows (in rank order), map it.

    Over several processes each writes its share to a part file (atomically); after all have
    finished, the main process joins the parts into the cache file (atomically) and removes them,
    while the others wait. A process that dies on the way leaves at most complete part files,
    never a cache file.
    """
    if not processes.distributed:
        write_states(path, share, metadata)
    else:
        parts = [_part_path(path, rank, processes.world_size) for rank in range(processes.world_size)]
        write_states(parts[processes.rank], share, metadata)
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
