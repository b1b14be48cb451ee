"""Stored backbone inputs for the uncached models: token ids and pixels, prepared once.

The uncached baselines (`fft-*`, `adapter-*`, `lora-*`) run their backbones in every training
step, but not their processors: titles are tokenised (padded to the run's token limit) and
covers decoded, resized and normalised once, into one safetensors file per (data set,
modality, processor) beside the state cache, memory-mapped afterwards, so no JPEG decoding
or tokenising happens inside the training step. Token ids are stored as int32 with an int8
mask, pixels as float16: `[N, tokens]` and `[N, 3, H, W]`. This module stores and maps
tensors; the extractor's processors make them.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from crossan.zoo.core.atomic import atomic_write
from crossan.zoo.core.distributed import SINGLE, Processes
from crossan.zoo.features.states import cache_path

__all__ = ["FORMAT_VERSION", "STORED_DTYPES", "input_cache_path", "open_inputs", "save_inputs"]

FORMAT_VERSION = "1"
STORED_DTYPES = {"input_ids": torch.int32, "attention_mask": torch.int8, "pixel_values": torch.float16}


def input_cache_path(cache_dir: Path, metadata: dict[str, str], modality: str) -> Path:
    """`<cache_dir>/inputs/<data set>/<modality>-<hash of the metadata>.safetensors`."""
    return cache_path(cache_dir, metadata, modality, folder="inputs")


def open_inputs(path: Path, expected: dict[str, str] | None = None) -> dict[str, torch.Tensor] | None:
    """Memory-map the stored inputs by name; None when missing, unreadable or stale."""
    if not Path(path).is_file():
        return None
    try:
        with safe_open(path, framework="pt") as handle:
            if expected is not None and handle.metadata() != expected:
                return None
            names = [name for name in STORED_DTYPES if name in handle.keys()]  # the backbones' input order
            return {name: handle.get_tensor(name) for name in names}
    except (OSError, SafetensorError):
        return None


def save_inputs(
    path: Path, tensors: dict[str, torch.Tensor] | None, metadata: dict[str, str], processes: Processes = SINGLE
) -> dict[str, torch.Tensor]:
    """Write the main process's `tensors` atomically (the others pass None and wait), map them."""
    if processes.is_main:
        assert tensors is not None, "the main process writes the stored inputs"
        atomic_write(
            path,
            lambda temporary: save_file({k: v.contiguous() for k, v in tensors.items()}, temporary, metadata=metadata),
        )
    processes.barrier()
    mapped = open_inputs(path, metadata)
    assert mapped is not None, f"{path} was just written but does not load"
    return mapped
