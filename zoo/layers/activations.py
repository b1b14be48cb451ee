"""Name -> activation, shared by adapters and the fused kernel's epilogue.

`activate` branches on the name instead of looking a function up, so modules that call it
from `forward` stay scriptable (`torch.jit.script`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from crossan.kernels.reference import ACTIVATIONS  # the fused kernel's epilogues: adapters accept exactly these

__all__ = ["ACTIVATIONS", "activate", "check_activation"]


def check_activation(name: str) -> str:
    """`name` if it is a known activation (`relu` or exact-erf `gelu`), else a ValueError."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {ACTIVATIONS}")
    return name


def activate(x: torch.Tensor, name: str) -> torch.Tensor:
    """The activation called `name` applied to `x`."""
    if name == "relu":
        return F.relu(x)
    if name == "gelu":
        return F.gelu(x)
    raise ValueError("unknown activation " + name + "; choose relu or gelu")
