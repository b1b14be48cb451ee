"""The saved item-embedding table: every catalogue item's embedding plus its item id.

Reading checks what is cheap to check, each failure one line naming the file: the safetensors
header (an empty or truncated file fails there), the tensor and its shape, the ids in the
metadata (a list of distinct strings, one per row) and that every embedding is finite.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from crossan.export.errors import ExportFileError
from crossan.export.ranking import non_finite_rows
from crossan.export.reading import REEXPORT, describe, one_line, require_file
from crossan.zoo.core.atomic import atomic_write

__all__ = ["TABLE_FILE", "save_safetensors", "save_item_table", "load_item_table"]

TABLE_FILE = "item_embeddings.safetensors"
_TENSOR = "item_embeddings"


def save_safetensors(path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> None:
    """`safetensors.numpy.save_file`, with a failed write (a full disk) raised as the `OSError` it is."""
    try:
        save_file(tensors, str(path), metadata=metadata)
    except SafetensorError as error:
        raise OSError(f"could not write {path}: {one_line(error)}") from error


def save_item_table(path: Path, embeddings: np.ndarray, item_ids: Sequence[str], source: str) -> Path:
    """Write `embeddings [N, D]` (row i = `item_ids[i]`) atomically; the ids go into the file's metadata."""
    if len(item_ids) != embeddings.shape[0]:
        raise ValueError(f"{len(item_ids)} item ids for {embeddings.shape[0]} embeddings")
    atomic_write(
        Path(path),
        lambda temporary: save_safetensors(
            Path(temporary),
            {_TENSOR: np.ascontiguousarray(embeddings, dtype=np.float32)},
            metadata={"item_ids": json.dumps(list(item_ids)), "source": source},
        ),
    )
    return path


def _read(path: Path) -> tuple[np.ndarray, object]:
    """The table tensor and the decoded `item_ids` metadata, as stored."""
    try:
        with safe_open(str(path), framework="np") as handle:
            if _TENSOR not in handle.keys():
                raise ExportFileError(
                    f"{path}: no {_TENSOR!r} tensor (it holds {describe(list(handle.keys()))}); {REEXPORT}"
                )
            embeddings = handle.get_tensor(_TENSOR)
            ids_text = (handle.metadata() or {}).get("item_ids")
    except SafetensorError as error:
        raise ExportFileError(f"{path}: not a readable safetensors file ({one_line(error)}); {REEXPORT}") from error
    try:
        return embeddings, json.loads(ids_text) if ids_text is not None else None
    except json.JSONDecodeError as error:
        raise ExportFileError(
            f"{path}: its item_ids metadata is not valid JSON ({one_line(error)}); {REEXPORT}"
        ) from error


def load_item_table(path: Path) -> tuple[np.ndarray, list[str]]:
    """`(embeddings [N, D] float32, item_ids)` from a file written by `save_item_table`."""
    path = require_file(Path(path))
    embeddings, item_ids = _read(path)
    if embeddings.ndim != 2 or embeddings.dtype != np.float32:
        raise ExportFileError(
            f"{path}: embeddings are {embeddings.dtype}{list(embeddings.shape)}, "
            f"expected float32 [items, width]; {REEXPORT}"
        )
    if not isinstance(item_ids, list) or not all(isinstance(item, str) for item in item_ids):
        raise ExportFileError(f"{path}: its item_ids metadata is not a list of strings; {REEXPORT}")
    if len(item_ids) != embeddings.shape[0]:
        raise ExportFileError(f"{path}: {len(item_ids)} item ids for {embeddings.shape[0]} embeddings; {REEXPORT}")
    if len(set(item_ids)) != len(item_ids):
        repeated = sorted(item for item, count in Counter(item_ids).items() if count > 1)
        raise ExportFileError(f"{path}: item ids repeat ({describe(repeated)}); {REEXPORT}")
    bad = non_finite_rows(embeddings)
    if len(bad):
        raise ExportFileError(
            f"{path}: the embeddings of {len(bad)} item(s) hold NaN or inf "
            f"({describe([item_ids[row] for row in bad])}); {REEXPORT}"
        )
    return embeddings, item_ids
