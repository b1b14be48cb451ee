"""Name -> activation, shared by adapters and the fused kernel's epilogue."""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from kernels import ACTIVATIONS  # the fused kernel's epilogues: adapters accept exactly these

__all__ = ["ACTIVATIONS", "activation_function", "make_activation"]

_FUNCTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"relu": F.relu, "gelu": F.gelu}


def activation_function(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The activation called `name` as a function (`relu` or exact-erf `gelu`)."""
    if name not in _FUNCTIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {ACTIVATIONS}")
    return _FUNCTIONS[name]


def make_activation(name: str) -> nn.Module:
    """The activation called `name` as a module."""
    activation_function(name)
    return nn.ReLU() if name == "relu" else nn.GELU()
