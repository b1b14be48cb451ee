"""Houlsby bottleneck adapters: one (`HoulsbyAdapter`) or one per tower with stacked weights (`TowerAdapters`).

Both compute `A(x) = x + W_up act(W_down x + b_down) + b_up` through the same two functions,
`adapter_hidden` and `adapter_output`, which take the weights of one adapter (`[r, W]`, the
`nn.Linear` layout) or of a stack of T adapters (`[T, r, W]`, applied to `x [T, N, W]` with
one batched matrix product).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from crossan.zoo.layers.activations import activate, check_activation

__all__ = ["HoulsbyAdapter", "TowerAdapters", "adapter_hidden", "adapter_output", "ADAPTER_INIT_STD"]

ADAPTER_INIT_STD = 0.01
"""Adapter weights start at N(0, 0.01) and biases at zero, so a fresh adapter is close to the identity."""


def _affine(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """`x W^T + b` for one weight `[out, in]` (`nn.Linear`'s layout), or per tower for a stack
    `[T, out, in]` and `x [T, N, in]` (pass `[T, in, out]` storage as its `.mT` view: the product
    then reads it as it is stored)."""
    if weight.dim() == 2:
        return F.linear(x, weight, bias)
    return torch.baddbmm(bias.unsqueeze(-2), x, weight.mT)


def adapter_hidden(
    x: torch.Tensor, down_weight: torch.Tensor, down_bias: torch.Tensor, activation: str
) -> torch.Tensor:
    """The activated bottleneck `act(x W_down^T + b_down)`, `[..., r]`."""
    return activate(_affine(x, down_weight, down_bias), activation)


def adapter_output(
    x: torch.Tensor, hidden: torch.Tensor, up_weight: torch.Tensor, up_bias: torch.Tensor
) -> torch.Tensor:
    """The adapter's output `x + hidden W_up^T + b_up`, `[..., W]`, from its input and bottleneck."""
    return x + _affine(hidden, up_weight, up_bias)


class HoulsbyAdapter(nn.Module):
    """One adapter, width W -> r -> W, no LayerNorm. `r` may exceed `W` (the paper sweeps 32..8192)."""

    def __init__(self, width: int, hidden_dim: int, activation: str = "relu") -> None:
        super().__init__()
        if width <= 0 or hidden_dim <= 0:
            raise ValueError(f"adapter width and hidden_dim must be positive, got {width}, {hidden_dim}")
        check_activation(activation)
        self.width = width
        self.hidden_dim = hidden_dim
        self.activation = activation
        self.down = nn.Linear(width, hidden_dim)
        self.up = nn.Linear(hidden_dim, width)
        for linear in (self.down, self.up):
            nn.init.normal_(linear.weight, std=ADAPTER_INIT_STD)
            nn.init.zeros_(linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`x [..., W] -> [..., W]`."""
        return self.up_residual(x, adapter_hidden(x, self.down.weight, self.down.bias, self.activation))

    def up_residual(self, x: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """Second half of the adapter given the activated bottleneck `hidden [..., r]`."""
        return adapter_output(x, hidden, self.up.weight, self.up.bias)


class TowerAdapters(nn.Module):
    """T Houlsby adapters, one per tower, with weights stacked along a leading tower axis.

    `down_weight [T, r, W]`, `down_bias [T, r]`, `up_weight [T, W, r]`, `up_bias [T, W]`:
    tower t's slices are exactly the parameters of a `HoulsbyAdapter` (`down.weight`, ...),
    see `tower_parameters`. `forward(x [T, N, W])` runs all T adapters in two batched
    matrix products.
    """

    def __init__(self, num_towers: int, width: int, hidden_dim: int, activation: str = "relu") -> None:
        super().__init__()
        if num_towers <= 0 or width <= 0 or hidden_dim <= 0:
            raise ValueError(
                f"towers, adapter width and hidden_dim must be positive, got {num_towers}, {width}, {hidden_dim}"
            )
        check_activation(activation)
        self.num_towers = num_towers
        self.width = width
        self.hidden_dim = hidden_dim
        self.activation = activation
        self.down_weight = nn.Parameter(torch.empty(num_towers, width, hidden_dim).normal_(0.0, ADAPTER_INIT_STD))
        self.down_bias = nn.Parameter(torch.zeros(num_towers, hidden_dim))
        self.up_weight = nn.Parameter(torch.empty(num_towers, hidden_dim, width).normal_(0.0, ADAPTER_INIT_STD))
        self.up_bias = nn.Parameter(torch.zeros(num_towers, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`x [T, N, W] -> [T, N, W]`."""
        return self.up_residual(x, adapter_hidden(x, self.down_weight.mT, self.down_bias, self.activation))

    def up_residual(self, x: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """Second half of every adapter given the activated bottlenecks `hidden [T, N, r]`."""
        return adapter_output(x, hidden, self.up_weight.mT, self.up_bias)

    def tower_parameters(self, tower: int, prefix: str = "") -> dict[str, torch.Tensor]:
        """Tower `tower`'s adapter as `HoulsbyAdapter` parameter names (after `prefix`, for an
        adapter inside another module) -> slices: views, so gradients through them reach these
        stacked parameters (`torch.func.functional_call`)."""
        return {
            f"{prefix}down.weight": self.down_weight[tower].t(),
            f"{prefix}down.bias": self.down_bias[tower],
            f"{prefix}up.weight": self.up_weight[tower].t(),
            f"{prefix}up.bias": self.up_bias[tower],
        }

    def extra_repr(self) -> str:
        return (
            f"num_towers={self.num_towers}, width={self.width}, hidden_dim={self.hidden_dim}, "
            f"activation={self.activation!r}"
        )
