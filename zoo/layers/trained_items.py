"""Which catalogue items occur in training: what a model needs to treat cold items apart.

Items that never occur in a training prefix have no learned evidence behind them, and neither
have new items served from raw content (row `NO_ID_ROW`). The ID term gives them no ID vector;
the frozen-similarity prior may weigh them differently (`ColdItemScale`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

__all__ = ["NO_ID_ROW", "ColdItemScale", "TrainedItems"]

NO_ID_ROW = -1
"""The row to pass for an item outside the trained catalogue (a new item)."""


class TrainedItems(nn.Module):
    """Holds which of `num_items` catalogue rows occur in training (`seen`, a buffer saved with
    the model) and answers it for a batch of rows."""

    if TYPE_CHECKING:  # the buffer's type, for the type checker only: TorchScript cannot read it here
        seen: torch.Tensor  # [num_items] bool: rows that occur in training

    def __init__(self, num_items: int) -> None:
        super().__init__()
        self.register_buffer("seen", torch.zeros(num_items, dtype=torch.bool))

    def mark_seen(self, seen: torch.Tensor) -> None:
        """Set which rows occur in training (`seen [num_items]` bool)."""
        if seen.shape != self.seen.shape:
            raise ValueError(f"seen must be [{self.seen.numel()}], got {list(seen.shape)}")
        self.seen.copy_(seen)

    def is_trained(self, rows: torch.Tensor) -> torch.Tensor:
        """Bool `[N]` for `rows [N]` (0-based catalogue rows, or `NO_ID_ROW`): whether each occurs
        in training; a new item never does."""
        known = rows >= 0
        return known & self.seen[torch.where(known, rows, torch.zeros_like(rows))]


class ColdItemScale(TrainedItems):
    """`rows [N]` -> a weight `[N, 1]`: 1 for items that occur in training, `cold_scale` for the
    others (cold and new items), to multiply their frozen-similarity prior embeddings by."""

    def forward(self, rows: torch.Tensor, cold_scale: float) -> torch.Tensor:
        trained = self.is_trained(rows).unsqueeze(-1)
        return torch.where(trained, 1.0, cold_scale)
