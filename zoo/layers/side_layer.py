"""One side-network layer: a gated mix of K inputs feeding a Houlsby adapter."""
from __future__ import annotations

import torch
from torch import nn

from zoo.layers.adapter import HoulsbyAdapter
from zoo.layers.mixer import GatedCrossModalMixer

__all__ = ["GatedAdapterLayer"]


class GatedAdapterLayer(nn.Module):
    """`Z = A(x)` with `x = mixer(inputs)`; mix and down-projection run fused."""

    def __init__(self, mixer: GatedCrossModalMixer, adapter: HoulsbyAdapter) -> None:
        super().__init__()
        self.mixer = mixer
        self.adapter = adapter

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """`inputs [K, N, W] -> [N, W]`."""
        x, hidden = self.mixer.mix_down(inputs, self.adapter)
        return self.adapter.up_residual(x, hidden)
