"""A user's history pooled with weights that decay with age (the frozen-similarity prior's user side)."""

from __future__ import annotations

import torch

__all__ = ["decayed_history"]


def decayed_history(embeddings: torch.Tensor, padding_mask: torch.Tensor, decay: float) -> torch.Tensor:
    """`[B, T, F]`: at every position t, the sum over the non-padded positions s <= t of
    `decay ** (t - s)` times `embeddings [B, T, F]` at s (`padding_mask [B, T]`, True = pad)."""
    positions = torch.arange(embeddings.shape[1], device=embeddings.device)
    steps_back = positions.unsqueeze(1) - positions.unsqueeze(0)
    weights = (decay ** steps_back.clamp(min=0).to(embeddings.dtype)) * (steps_back >= 0).to(embeddings.dtype)
    kept = embeddings * (~padding_mask).unsqueeze(-1).to(embeddings.dtype)
    return weights @ kept
