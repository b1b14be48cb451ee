"""The optional ID term of a content model: a learned vector per catalogue item, added to its
content embedding.

Items that never occur in training keep a zero ID vector (their `seen` flag is off), and so do
new items served from raw content (row -1), so a cold item's embedding is its content
embedding alone, as without the term. The vectors start at zero: training begins from the pure
content model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

__all__ = ["ItemIdEmbedding", "NO_ID_ROW"]

NO_ID_ROW = -1
"""The row to pass for an item without an ID vector (a new item): its ID term is zero."""


class ItemIdEmbedding(nn.Module):
    """`rows [N]` (0-based catalogue rows, or `NO_ID_ROW`) -> ID vectors `[N, D]`, with
    element-wise `dropout` in training."""

    if TYPE_CHECKING:  # the buffer's type, for the type checker only: TorchScript cannot read it here
        seen: torch.Tensor  # [num_items] bool: rows that occur in training

    def __init__(self, num_items: int, dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(num_items, dim))
        self.dropout = nn.Dropout(dropout)
        self.register_buffer("seen", torch.zeros(num_items, dtype=torch.bool))

    def mark_seen(self, seen: torch.Tensor) -> None:
        """Set which rows occur in training (`seen [num_items]` bool); the others stay zero."""
        if seen.shape != self.seen.shape:
            raise ValueError(f"seen must be [{self.seen.numel()}], got {list(seen.shape)}")
        self.seen.copy_(seen)

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        known = rows >= 0
        safe = torch.where(known, rows, torch.zeros_like(rows))
        keep = known & self.seen[safe]
        return self.dropout(self.weight[safe] * keep.unsqueeze(-1).to(self.weight.dtype))
