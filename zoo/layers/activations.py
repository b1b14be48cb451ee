"""Name -> activation module, shared by adapters and the fused kernel's epilogue."""
from __future__ import annotations

from torch import nn

from kernels import ACTIVATIONS  # the fused kernel's epilogues: adapters accept exactly these

__all__ = ["ACTIVATIONS", "make_activation"]


def make_activation(name: str) -> nn.Module:
    """Return the activation called `name` (`relu` or exact-erf `gelu`)."""
    if name == "relu":
        return nn.ReLU()
    if name == "gelu":
        return nn.GELU()
    raise ValueError(f"unknown activation {name!r}; choose one of {ACTIVATIONS}")
