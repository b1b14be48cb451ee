"""Run-directory files, all written atomically (temporary file + rename)."""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import save_file

__all__ = ["atomic_write", "write_json", "read_json", "save_weights", "save_per_user"]


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Call `write(temporary_path)`, fsync, then rename over `path`: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(descriptor)
    try:
        write(temporary)
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_json(path: Path, value: Any) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(value, indent=2) + "\n"))


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def save_weights(path: Path, state: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Tensors to safetensors (contiguous CPU copies; shared storage is cloned)."""
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def save_per_user(path: Path, user_ids: list[str], ranks: torch.Tensor) -> None:
    """Per-user target ranks as JSON (`null` = the target was masked, a miss)."""
    values = [None if math.isinf(r) else int(r) for r in ranks.tolist()]
    write_json(path, {"user_ids": user_ids, "ranks": values})
