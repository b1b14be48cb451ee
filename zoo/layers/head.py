"""A tower's item head: two linear maps W -> W -> D with nothing in between."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["TowerHead"]


class TowerHead(nn.Module):
    """`e = B (A z + a) + b`, the paper's two-layer head (its parameters count as two layers).

    With no activation between them the two maps are one linear map with weight `B A [D, W]`
    and bias `B a + b`; computing that product first costs `D W^2` once per call instead of
    `N W^2` for every batch of N items, and the backward pass through the product is as cheap
    (`N D W + 2 D W^2` instead of `2 N W^2`). The result equals `B (A z + a) + b` up to float
    rounding.
    """

    def __init__(self, width: int, dim: int) -> None:
        super().__init__()
        self.hidden = nn.Linear(width, width)
        self.out = nn.Linear(width, dim)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """`z [..., W] -> [..., D]`."""
        weight = self.out.weight @ self.hidden.weight
        bias = torch.addmv(self.out.bias, self.out.weight, self.hidden.bias)
        return F.linear(z, weight, bias)
