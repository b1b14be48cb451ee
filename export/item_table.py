"""The saved item-embedding table: every catalogue item's embedding plus its item id."""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from crossan.zoo.atomic import atomic_write

__all__ = ["TABLE_FILE", "save_item_table", "load_item_table"]

TABLE_FILE = "item_embeddings.safetensors"
_TENSOR = "item_embeddings"


def save_item_table(path: Path, embeddings: np.ndarray, item_ids: Sequence[str], source: str) -> Path:
    """Write `embeddings [N, D]` (row i = `item_ids[i]`) atomically; the ids go into the file's metadata."""
    if len(item_ids) != embeddings.shape[0]:
        raise ValueError(f"{len(item_ids)} item ids for {embeddings.shape[0]} embeddings")
    atomic_write(Path(path), lambda temporary: save_file(
        {_TENSOR: np.ascontiguousarray(embeddings, dtype=np.float32)}, temporary,
        metadata={"item_ids": json.dumps(list(item_ids)), "source": source}))
    return path


def load_item_table(path: Path) -> tuple[np.ndarray, list[str]]:
    """`(embeddings [N, D] float32, item_ids)` from a file written by `save_item_table`."""
    with safe_open(str(path), framework="np") as handle:
        embeddings = handle.get_tensor(_TENSOR)
        item_ids = json.loads(handle.metadata()["item_ids"])
    if len(item_ids) != embeddings.shape[0]:
        raise ValueError(f"{path}: {len(item_ids)} item ids for {embeddings.shape[0]} embeddings")
    return embeddings, item_ids
