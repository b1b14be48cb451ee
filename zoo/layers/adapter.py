"""Houlsby bottleneck adapter: the trainable unit of every side tower."""
from __future__ import annotations

import torch
from torch import nn

from zoo.layers.activations import make_activation

__all__ = ["HoulsbyAdapter"]


class HoulsbyAdapter(nn.Module):
    """`A(x) = x + W_up act(W_down x + b_down) + b_up` (width W -> r -> W, no LayerNorm).

    Weights start at N(0, 0.01) and biases at zero, so a fresh adapter is close to the
    identity. `r` may exceed `W` (the paper sweeps 32..8192).
    """

    def __init__(self, width: int, hidden_dim: int, activation: str = "relu") -> None:
        super().__init__()
        if width <= 0 or hidden_dim <= 0:
            raise ValueError(f"adapter width and hidden_dim must be positive, got {width}, {hidden_dim}")
        self.width = width
        self.hidden_dim = hidden_dim
        self.activation = activation
        self.down = nn.Linear(width, hidden_dim)
        self.up = nn.Linear(hidden_dim, width)
        self.act = make_activation(activation)
        for linear in (self.down, self.up):
            nn.init.normal_(linear.weight, std=0.01)
            nn.init.zeros_(linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`x [..., W] -> [..., W]`."""
        return self.up_residual(x, self.act(self.down(x)))

    def up_residual(self, x: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """Second half of the adapter given the activated bottleneck `hidden [..., r]`.

        Used by the fused mixer path, which produces `x` and `hidden` in one kernel.
        """
        return x + self.up(hidden)
