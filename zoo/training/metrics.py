"""Full-ranking metrics: target ranks with history masking, HR@K and NDCG@K."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from crossan.zoo.core.errors import NonFiniteError
from crossan.zoo.core.finite import require_finite

__all__ = [
    "CUTOFFS",
    "METRIC_NAMES",
    "target_ranks",
    "target_ranks_excluding",
    "metrics_from_ranks",
    "per_user_metric",
    "standard_error",
]

CUTOFFS = (10, 20)
METRIC_NAMES = tuple(f"{kind}@{k}" for kind in ("HR", "NDCG") for k in CUTOFFS)
"""The reported metrics, in table order: HR at every cutoff, then NDCG."""


def target_ranks(scores: torch.Tensor, targets: torch.Tensor, masked: torch.Tensor | None) -> torch.Tensor:
    """Rank of each target among all unmasked items, as float `[B]` (`inf` = the target is masked).

    `scores [B, N]`, `targets [B]` column indices, `masked [B, N]` bool or None. rank =
    1 + the number of other unmasked items scoring at least as high as the target: ties
    count against the target. A masked target is a miss; it is never unmasked (that would
    leak the answer).
    """
    if masked is None:
        empty = torch.zeros(0, dtype=torch.long, device=scores.device)
        return target_ranks_excluding(scores, targets, empty, empty)
    rows, columns = masked.nonzero().unbind(1)
    return target_ranks_excluding(scores, targets, rows, columns)


def target_ranks_excluding(
    scores: torch.Tensor,
    targets: torch.Tensor,
    rows: torch.Tensor,
    columns: torch.Tensor,
    name_row: Callable[[int], str] | None = None,
) -> torch.Tensor:
    """`target_ranks` with the masked entries given as `(rows, columns)` pairs (repeats
    allowed), so that masking costs what the histories hold rather than a `[B, N]` mask.

    Counting every item at least as high as the target, then taking back the masked ones that
    were counted, ranks exactly as filling the masked scores with -inf would. A NaN or infinite
    score stops with `NonFiniteError` (`name_row` names the row: a user): a NaN target is never
    outranked, so it would count as a hit.
    """
    require_finite(scores, "scores", name_row or (lambda row: f"row {row}"))
    target_scores = scores.gather(1, targets.unsqueeze(1)).squeeze(1)
    at_least = (scores >= target_scores.unsqueeze(1)).sum(dim=1)
    keys = torch.unique(rows * scores.shape[1] + columns)  # each masked entry once
    rows, columns = keys // scores.shape[1], keys % scores.shape[1]
    counted = scores[rows, columns] >= target_scores[rows]
    at_least = at_least - torch.bincount(rows[counted], minlength=scores.shape[0])
    target_masked = torch.zeros(scores.shape[0], dtype=torch.bool, device=scores.device)
    target_masked[rows[columns == targets[rows]]] = True
    # The target counts itself once when unmasked.
    ranks = at_least.float()
    return torch.where(target_masked, torch.full_like(ranks, math.inf), ranks)


def per_user_metric(ranks: torch.Tensor, name: str) -> torch.Tensor:
    """Per-user `HR@K` or `NDCG@K` values `[B]` from ranks."""
    kind, _, cutoff = name.partition("@")
    k = int(cutoff)
    hit = ranks <= k
    if kind == "HR":
        return hit.float()
    if kind == "NDCG":
        return torch.where(hit, 1.0 / torch.log2(ranks.clamp(max=k) + 1.0), torch.zeros_like(ranks))
    raise ValueError(f"unknown metric {name!r}; use HR@K or NDCG@K")


def metrics_from_ranks(ranks: torch.Tensor, cutoffs: tuple[int, ...] = CUTOFFS) -> dict[str, float]:
    """Mean `HR@K` and `NDCG@K` over users for each cutoff (a NaN rank is a defect, not a miss)."""
    if bool(torch.isnan(ranks).any()):
        raise NonFiniteError(f"ranks: {int(torch.isnan(ranks).sum())} of {len(ranks)} are NaN")
    names = [f"{kind}@{k}" for k in cutoffs for kind in ("HR", "NDCG")]
    return {name: float(per_user_metric(ranks, name).mean()) for name in sorted(names, key=lambda n: (n[0], n))}


def standard_error(ranks: torch.Tensor, name: str) -> float:
    """Standard error of the mean of metric `name` over the users of `ranks` (what a metric
    measured on a sample of users is uncertain by)."""
    values = per_user_metric(ranks, name).double()
    return float(values.std() / math.sqrt(len(values))) if len(values) > 1 else math.nan
