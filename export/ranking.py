"""Ranking shared by validation and serving: history windows in, top-k catalogue rows out.

Item indices are 1-based (0 is padding, as in `crossan.zoo.data`); catalogue rows are 0-based.
NaN and infinite scores have no order, so they stop the ranking with `NonFiniteScoreError`
instead of being left out of it. NumPy only (the zoo's data set module it takes `PAD` from loads no
PyTorch), so that serving runs without PyTorch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from crossan.export.errors import NonFiniteScoreError
from crossan.export.reading import describe
from crossan.zoo.data.dataset import PAD

__all__ = ["PAD", "history_window", "non_finite_rows", "check_finite_scores", "top_k_rows"]


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
            rows[i, length - len(tail) :] = tail - 1
            padding_mask[i, length - len(tail) :] = False
    return rows, padding_mask


def non_finite_rows(values: np.ndarray) -> np.ndarray:
    """Indices of the rows of `values [N, ...]` holding a NaN or an infinity."""
    values = np.asarray(values)
    return np.flatnonzero(~np.isfinite(values.reshape(len(values), -1)).all(axis=1))


def check_finite_scores(
    scores: np.ndarray, item_names: Sequence[str] | None = None, users: Sequence[int] | None = None
) -> None:
    """Raise `NonFiniteScoreError` naming the users (rows of `scores [B, N]`: positions in the
    batch, or `users[row]`) and the items (columns: `item_names[column]`, else the catalogue row)
    of every NaN or infinite score."""
    finite = np.isfinite(scores)
    if finite.all():
        return
    rows = np.flatnonzero(~finite.all(axis=1)).tolist()
    columns = np.flatnonzero(~finite.all(axis=0)).tolist()
    named_users = [users[row] for row in rows] if users is not None else rows
    named_items = [item_names[c] for c in columns] if item_names is not None else [f"row {c}" for c in columns]
    raise NonFiniteScoreError(
        f"NaN or infinite scores for user(s) {describe(named_users)} (positions in the batch) "
        f"and item(s) {describe(named_items)}: the embeddings are not finite or their dot "
        f"products overflow float32; nothing was ranked"
    )


def top_k_rows(
    user_vectors: np.ndarray,
    item_table: np.ndarray,
    histories: Sequence[np.ndarray],
    k: int,
    item_names: Sequence[str] | None = None,
) -> list[np.ndarray]:
    """Per user, the `k` best catalogue rows by dot product, best first, none from the history.

    Ties keep catalogue order (stable sort), so two runtimes that agree on the scores agree
    on the ranking. Fewer than `k` rows come back when the history covers the rest. A NaN or
    infinite score raises `NonFiniteScoreError` (items named by `item_names`, else by row).
    """
    with np.errstate(over="ignore", invalid="ignore"):  # reported below, by user and item
        scores = np.asarray(user_vectors, dtype=np.float32) @ np.asarray(item_table, dtype=np.float32).T
    check_finite_scores(scores, item_names)
    excluded = np.zeros(scores.shape, dtype=bool)
    for row, history in enumerate(histories):
        seen = np.asarray(history, dtype=np.int64)
        excluded[row, seen[seen != PAD] - 1] = True
    scores[excluded] = -np.inf
    lists = []
    for row, row_scores in enumerate(scores):
        ranked = _best_rows(row_scores, k)
        lists.append(ranked[~excluded[row, ranked]])
    return lists


def _best_rows(scores: np.ndarray, k: int) -> np.ndarray:
    """The rows of the `k` best `scores [N]`, best first, ties in row order: a stable sort of only
    the scores at or above the k-th best (a partition finds it), not of all N."""
    count = len(scores)
    if k < count:
        kth_best = np.partition(scores, count - k)[count - k]
        candidates = np.flatnonzero(scores >= kth_best)
    else:
        candidates = np.arange(count)
    return candidates[np.argsort(-scores[candidates], kind="stable")[:k]]
