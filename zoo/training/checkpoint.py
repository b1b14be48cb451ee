"""Run-directory files, all written atomically (temporary file + rename)."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from zoo.atomic import atomic_write

__all__ = ["write_json", "read_json", "save_weights", "save_per_user"]


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
