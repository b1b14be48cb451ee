"""Stored backbone inputs for the uncached models: token ids and pixels, prepared once.

The uncached baselines (`fft-*`, `adapter-*`, `lora-*`) run their backbones in every training
step, but not their processors: titles are tokenised (padded to the run's token limit) and
covers decoded, resized and normalised once, into one safetensors file per (data set,
modality, processor) beside the feature cache, memory-mapped afterwards, so no JPEG decoding
or tokenising happens inside the training step. Token ids are stored as int32 with an int8
mask, pixels as float16: `[N, tokens]` and `[N, 3, H, W]`.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from crossan.zoo.atomic import atomic_write
from crossan.zoo.backbones.extractor import StateExtractor
from crossan.zoo.cache import cache_path, check_media, dataset_metadata
from crossan.zoo.data.dataset import SequenceDataset
from crossan.zoo.errors import ConfigError
from crossan.zoo.training.distributed import SINGLE, Processes

__all__ = ["STORED_DTYPES", "input_metadata", "input_cache_path", "open_inputs", "build_inputs"]

FORMAT_VERSION = "1"
STORED_DTYPES = {"input_ids": torch.int32, "attention_mask": torch.int8, "pixel_values": torch.float16}


def input_metadata(dataset: SequenceDataset, extractor: StateExtractor) -> dict[str, str]:
    """The metadata a valid input file for this data set and processor must carry."""
    return {
        "format_version": FORMAT_VERSION,
        "kind": "backbone inputs",
        "processor": json.dumps(extractor.preprocessing(), sort_keys=True, default=str),
        "tokenizer": json.dumps(getattr(extractor.backbone.processor, "name_or_path", ""), default=str),
        **dataset_metadata(dataset),
    }


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


def build_inputs(dataset: SequenceDataset, extractor: StateExtractor, path: Path, batch_size: int = 32,
                 allow_missing_media: bool = False, on_batch: Callable[[int], None] | None = None,
                 processes: Processes = SINGLE) -> dict[str, torch.Tensor]:
    """Prepare every item's backbone inputs, write them atomically, map them.

    The main process prepares and writes (tokenising and resizing are cheap next to a backbone);
    the others wait for it. Rows of missing media (when allowed) are zero."""
    if extractor.modality not in ("text", "image"):
        raise ConfigError(f"stored inputs cover text and image; {extractor.modality} is not served to uncached models")
    metadata = input_metadata(dataset, extractor)
    if processes.is_main:
        missing = check_media(dataset, extractor.modality, allow_missing_media)
        tensors: dict[str, torch.Tensor] = {}
        for start in range(0, dataset.num_items, batch_size):
            rows = [r for r in range(start, min(start + batch_size, dataset.num_items)) if r not in missing]
            if rows:
                inputs = extractor.model_inputs([extractor.read_item(dataset, r) for r in rows], pad_to_limit=True)
                for name in extractor.input_names:
                    value = inputs[name].to(STORED_DTYPES[name])
                    if name not in tensors:
                        tensors[name] = torch.zeros(dataset.num_items, *value.shape[1:], dtype=value.dtype)
                    tensors[name][torch.tensor(rows)] = value
            if on_batch is not None:
                on_batch(min(batch_size, dataset.num_items - start))
        atomic_write(path, lambda temporary: save_file({k: v.contiguous() for k, v in tensors.items()}, temporary,
                                                       metadata=metadata))
    processes.barrier()
    mapped = open_inputs(path, metadata)
    assert mapped is not None, f"{path} was just written but does not load"
    return mapped
