"""One tower's side layer written out on its own: a gated mix of K stacked inputs feeding a Houlsby adapter.

This is the per-tower formulation the batched side network (`crossan.zoo.layers.side_network`) is
tested and benchmarked against; it is also the readable definition of what one tower does.
"""

from __future__ import annotations

import torch
from torch import nn

from crossan.zoo.layers.adapter import HoulsbyAdapter
from crossan.zoo.layers.mixer import GatedCrossModalMixer

__all__ = ["GatedAdapterLayer"]


class GatedAdapterLayer(nn.Module):
    """`Z = A(mixer(inputs))`."""

    def __init__(self, mixer: GatedCrossModalMixer, adapter: HoulsbyAdapter) -> None:
        super().__init__()
        self.mixer = mixer
        self.adapter = adapter

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """`inputs [K, N, W] -> [N, W]`."""
        return self.adapter(self.mixer(inputs))
