"""SASRec over learned item-ID embeddings (the ID baseline)."""
from __future__ import annotations

import torch
from torch import nn

from zoo.models.base import Recommender
from zoo.models.config import SASRecIDConfig

__all__ = ["SASRecID"]


class SASRecID(Recommender):
    """Item embedding = a learned row per item id (rows are item indices 0..num_items-1)."""

    config: SASRecIDConfig

    def __init__(self, config: SASRecIDConfig) -> None:
        super().__init__(config)
        if config.num_items < 1:
            raise ValueError("sasrec-id needs num_items (the catalogue size) to build its embedding table")
        self.item_embedding = nn.Embedding(config.num_items, config.embedding_dim)
        nn.init.normal_(self.item_embedding.weight, std=0.02)

    @property
    def item_input_names(self) -> tuple[str, ...]:
        return ("item_rows",)

    def random_item_inputs(self, num_items: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, ...]:
        return (torch.randint(0, self.config.num_items, (num_items,), generator=generator),)

    def encode_items(self, *item_inputs: torch.Tensor) -> torch.Tensor:
        (rows,) = item_inputs
        return self.item_embedding(rows)
