"""The optional ID term of a content model: a learned vector per catalogue item, added to its
content embedding.

Items that never occur in training keep a zero ID vector (their `seen` flag is off), and so do
new items served from raw content (row -1), so a cold item's embedding is its content
embedding alone, as without the term. The vectors start at zero: training begins from the pure
content model.
"""

from __future__ import annotations

import torch
from torch import nn

from crossan.zoo.layers.trained_items import NO_ID_ROW, TrainedItems

__all__ = ["ItemIdEmbedding", "NO_ID_ROW"]


class ItemIdEmbedding(TrainedItems):
    """`rows [N]` (0-based catalogue rows, or `NO_ID_ROW`: a new item, whose ID term is zero)
    -> ID vectors `[N, D]`, with element-wise `dropout` in training. Rows outside training
    (`mark_seen`) stay zero."""

    def __init__(self, num_items: int, dim: int, dropout: float = 0.0) -> None:
        super().__init__(num_items)
        self.weight = nn.Parameter(torch.zeros(num_items, dim))
        self.dropout = nn.Dropout(dropout)

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        keep = self.is_trained(rows)
        safe = torch.where(rows >= 0, rows, torch.zeros_like(rows))
        return self.dropout(self.weight[safe] * keep.unsqueeze(-1).to(self.weight.dtype))
