"""Full-ranking metrics: target ranks with history masking, HR@K and NDCG@K."""
from __future__ import annotations

import math

import torch

__all__ = ["CUTOFFS", "METRIC_NAMES", "target_ranks", "metrics_from_ranks", "per_user_metric"]

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
    target_scores = scores.gather(1, targets.unsqueeze(1))
    if masked is not None:
        scores = scores.masked_fill(masked, float("-inf"))
    at_least = (scores >= target_scores).sum(dim=1)
    target_masked = masked.gather(1, targets.unsqueeze(1)).squeeze(1) if masked is not None else None
    # The target counts itself once when unmasked.
    ranks = at_least.float()
    if target_masked is not None:
        ranks = torch.where(target_masked, torch.full_like(ranks, math.inf), ranks)
    return ranks


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
    """Mean `HR@K` and `NDCG@K` over users for each cutoff."""
    names = [f"{kind}@{k}" for k in cutoffs for kind in ("HR", "NDCG")]
    return {name: float(per_user_metric(ranks, name).mean()) for name in sorted(names, key=lambda n: (n[0], n))}
