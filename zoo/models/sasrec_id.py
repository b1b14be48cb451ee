"""SASRec over learned item-ID embeddings (the ID baseline)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar, Self

import torch
from torch import nn

from crossan.zoo.core.errors import ConfigError
from crossan.zoo.models.config import RecommenderConfig
from crossan.zoo.models.recommender import Recommender
from crossan.zoo.models.registry import register_model

__all__ = ["SASRecID", "SASRecIDConfig"]


@dataclass(frozen=True)
class SASRecIDConfig(RecommenderConfig):
    """SASRec over learned item-ID embeddings: the ID baseline, same loss and protocol."""

    architecture: ClassVar[str] = "sasrec-id"
    search_space: ClassVar[str] = "sasrec-id.toml"
    num_items: int = field(default=0, metadata={"help": "catalogue size (set from the data set)"})
    dropout: float = 0.5
    attention_dropout: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_items < 0:
            raise ConfigError(f"num_items must be non-negative, got {self.num_items}")

    @property
    def reads_item_rows(self) -> bool:
        return True

    def fit_to_data(self, num_items: int, feature_shapes: Mapping[str, tuple[int, ...]]) -> Self:
        """One embedding row per catalogue item."""
        return dataclasses.replace(self, num_items=num_items)


@register_model(SASRecIDConfig, presets={"sasrec-id": {}})
class SASRecID(Recommender):
    """Item embedding = a learned row per item id (rows are item indices 0..num_items-1)."""

    config: SASRecIDConfig

    def __init__(self, config: SASRecIDConfig) -> None:
        super().__init__(config)
        if config.num_items < 1:
            raise ConfigError("sasrec-id needs num_items (the catalogue size) to build its embedding table")
        self.item_embedding = nn.Embedding(config.num_items, config.embedding_dim)
        nn.init.normal_(self.item_embedding.weight, std=0.02)

    @property
    def item_input_names(self) -> tuple[str, ...]:
        return ("item_rows",)

    def random_item_inputs(self, num_items: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, ...]:
        return (torch.randint(0, self.config.num_items, (num_items,), generator=generator),)

    def embed_items(self, *item_inputs: torch.Tensor) -> torch.Tensor:
        (rows,) = item_inputs
        return self.item_embedding(rows)

    def catalogue_state(self) -> dict[str, bool]:
        return {"item_embedding.weight": True}
