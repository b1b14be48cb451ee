"""In-batch debiased softmax cross-entropy with same-user masking."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["in_batch_debiased_cross_entropy", "same_user_mask"]


def same_user_mask(
    window: torch.Tensor,
    candidates: torch.Tensor,
    row_user: torch.Tensor,
    row_target: torch.Tensor,
    window_users: torch.Tensor | None = None,
) -> torch.Tensor:
    """Columns each row must not score: items of the row's own user other than its positive.

    `window [B, L]` item indices (0 = padding), `candidates [U]` the batch's unique items,
    `row_user [R]` the window of each prediction row, `row_target [R]` its positive item,
    `window_users [B]` the user of each window (default: every window its own user; windows
    of one user share their items). Returns `[R, U]` bool (True = masked). Another user's
    positive stays a negative.
    """
    in_sequence = (window.unsqueeze(-1) == candidates.view(1, 1, -1)).any(dim=1)  # [B, U]
    if window_users is not None:
        same_user = (window_users.unsqueeze(0) == window_users.unsqueeze(1)).float()  # [B, B]
        in_sequence = (same_user @ in_sequence.float()) > 0
    return in_sequence[row_user] & (candidates.unsqueeze(0) != row_target.unsqueeze(1))


def in_batch_debiased_cross_entropy(
    scores: torch.Tensor,
    log_weights: torch.Tensor,
    target_columns: torch.Tensor,
    masked: torch.Tensor,
    reduction: str = "mean",
) -> torch.Tensor:
    """Mean (or, with `reduction="sum"`, sum) over rows of `CE(scores - log q, target)` with
    `masked` columns set to -inf.

    Shapes: `scores [R, U]` (the model's score of each candidate for each prediction row,
    `model.scores`), `log_weights [U]` (`log q`: each candidate's log sampling weight; for the
    batch's own items their log popularity, see `crossan.zoo.training.negatives`), `target_columns [R]`
    (column of each row's positive), `masked [R, U]` bool. Subtracting `log q` corrects the
    in-batch sampling bias towards popular items.
    """
    logits = scores - log_weights.unsqueeze(0)
    # Half-precision logits (mixed precision) are upcast; float64 stays float64.
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32)).masked_fill(masked, float("-inf"))
    return F.cross_entropy(logits, target_columns, reduction=reduction)
