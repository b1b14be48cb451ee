"""Ranking shared by validation and serving: history windows in, top-k catalogue rows out.

Item indices are 1-based (0 is padding, as in `crossan.zoo.data`); catalogue rows are 0-based.
NumPy only, so that serving runs without PyTorch or the zoo.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["PAD", "history_window", "top_k_rows"]

# Equals crossan.zoo.data.PAD (a test checks it); importing zoo here would pull PyTorch into serving.
PAD = 0


def history_window(histories: Sequence[np.ndarray], length: int) -> tuple[np.ndarray, np.ndarray]:
    """The last `length` items of each history (1-based item indices), left-padded:
    catalogue `rows [B, T]` int64 and `padding_mask [B, T]` bool (True where padding).

    Padded positions hold row 0: the user encoder ignores embeddings under the padding mask,
    so gathering `item_table[rows]` needs no padding row.
    """
    rows = np.zeros((len(histories), length), dtype=np.int64)
    padding_mask = np.ones((len(histories), length), dtype=bool)
    for i, history in enumerate(histories):
        tail = np.asarray(history, dtype=np.int64)[-length:]
        if len(tail):
            rows[i, length - len(tail):] = tail - 1
            padding_mask[i, length - len(tail):] = False
    return rows, padding_mask


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
