"""Recommenders whose item embedding is computed from the items' content, with an optional
learned ID term per training item."""

from __future__ import annotations

import torch

from crossan.zoo.core.errors import ConfigError
from crossan.zoo.layers.item_ids import ItemIdEmbedding
from crossan.zoo.models.config import ContentConfig
from crossan.zoo.models.recommender import Recommender

__all__ = ["ContentRecommender"]


class ContentRecommender(Recommender):
    """A recommender whose item embedding is computed from the items' content
    (`encode_content`), plus, with `item_id_term`, a learned ID vector per training item.

    With the ID term (or anything else that looks items up by row: `config.reads_item_rows`)
    the item inputs end with `item_rows` (0-based catalogue rows; -1 for an item outside the
    trained catalogue, such as a new item served from raw content).
    """

    config: ContentConfig

    def __init__(self, config: ContentConfig) -> None:
        super().__init__(config)
        self.item_ids: ItemIdEmbedding | None = None
        if config.item_id_term:
            if config.num_items < 1:
                raise ConfigError("item_id_term needs num_items (the catalogue size, set from the data set)")
            self.item_ids = ItemIdEmbedding(config.num_items, config.embedding_dim, config.item_id_dropout)

    @property
    def content_input_names(self) -> tuple[str, ...]:
        """Names of the content tensors `encode_content` takes, in order."""
        raise NotImplementedError

    def encode_content(self, *content_inputs: torch.Tensor) -> torch.Tensor:
        """Content embeddings `[N, D]`."""
        raise NotImplementedError

    def random_content_inputs(
        self, num_items: int, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, ...]:
        """Content inputs of `num_items` made-up items."""
        raise NotImplementedError

    @property
    def item_input_names(self) -> tuple[str, ...]:
        return self.content_input_names + (("item_rows",) if self.config.reads_item_rows else ())

    def embed_items(self, *item_inputs: torch.Tensor) -> torch.Tensor:
        embeddings = self.encode_content(*self.content_inputs(item_inputs))
        if self.item_ids is None:
            return embeddings
        return embeddings + self.item_ids(item_inputs[-1])

    def random_item_inputs(self, num_items: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, ...]:
        content = self.random_content_inputs(num_items, generator)
        if not self.config.reads_item_rows:
            return content
        return (*content, torch.randint(0, self.config.num_items, (num_items,), generator=generator))

    def mark_trained_items(self, seen: torch.Tensor) -> None:
        if self.item_ids is not None:
            self.item_ids.mark_seen(seen.to(self.item_ids.seen.device))

    def content_inputs(self, item_inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """`item_inputs` without the catalogue rows (`config.reads_item_rows`)."""
        return item_inputs[:-1] if self.config.reads_item_rows else item_inputs
