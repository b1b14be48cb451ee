"""The two halves of a recommender as stand-alone modules, the units that get exported."""

from __future__ import annotations

import torch
from torch import nn

from crossan.zoo.models.recommender import Recommender

__all__ = ["ItemEncoder", "UserEncoder"]


class ItemEncoder(nn.Module):
    """Item inputs (`model.item_input_names`, batch first) -> item embeddings `[B, D]`.

    Run offline over the catalogue, and once for every new item from its cached states.
    """

    def __init__(self, model: Recommender) -> None:
        super().__init__()
        self.model = model

    def forward(self, *item_inputs: torch.Tensor) -> torch.Tensor:
        return self.model.encode_items(*item_inputs)


class UserEncoder(nn.Module):
    """`item_embeddings [B, T, D]`, `padding_mask [B, T]` (True = padding, left-padded) -> `[B, D]`.

    Run online from the embeddings of a user's most recent items.
    """

    def __init__(self, model: Recommender) -> None:
        super().__init__()
        self.model = model

    def forward(self, item_embeddings: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
        return self.model.encode_users(item_embeddings, padding_mask)
