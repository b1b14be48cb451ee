"""Ranking shared by validation and serving: history windows in, top-k catalogue rows out.

Item indices are 1-based (0 is padding, as in `zoo.data`); catalogue rows are 0-based.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from zoo.data.dataset import PAD
from zoo.training.evaluation import left_padded

__all__ = ["history_window", "padded_table", "top_k_rows"]


def history_window(histories: Sequence[np.ndarray], length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The last `length` item indices of each history, left-padded: `window [B, T]` and
    `padding_mask [B, T]` (True where padding)."""
    window = left_padded([np.asarray(h, dtype=np.int64) for h in histories], length)
    return window, window == PAD


def padded_table(item_table: np.ndarray) -> torch.Tensor:
    """`[N + 1, D]` float32: a zero row for the padding index, then the catalogue rows."""
    table = torch.from_numpy(np.ascontiguousarray(item_table, dtype=np.float32))
    return torch.cat([torch.zeros(1, table.shape[1]), table])


def top_k_rows(user_vectors: np.ndarray, item_table: np.ndarray, histories: Sequence[np.ndarray],
               k: int) -> list[np.ndarray]:
    """Per user, the `k` best catalogue rows by dot product, best first, none from the history.

    Ties keep catalogue order (stable sort), so two runtimes that agree on the scores agree
    on the ranking. Fewer than `k` rows come back when the history covers the rest.
    """
    scores = np.asarray(user_vectors, dtype=np.float32) @ np.asarray(item_table, dtype=np.float32).T
    for row, history in enumerate(histories):
        seen = np.asarray(history, dtype=np.int64)
        scores[row, seen[seen != PAD] - 1] = -np.inf
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return [ranked[np.isfinite(scores[row, ranked])] for row, ranked in enumerate(order)]
