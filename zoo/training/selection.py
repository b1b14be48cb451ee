"""How a setting chosen after training (`Recommender.validation_choices`) is picked on validation.

Every validation user counts alike in the mean score, and users whose next item never occurs in
training are a minority, so the best mean alone trades them away: the learned part of a content
model knows nothing of such items, and a setting that ranks them lower costs the mean little.
The rule states its weighting instead: the mean first, to within its own standard error (what
a sample of users cannot tell apart), then the cold users. Among the candidates whose mean is at
most one standard error below the best mean, the one with the best mean over the cold users
wins (the first on ties). The test split plays no part.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from crossan.zoo.training.metrics import per_user_metric, standard_error

__all__ = ["pick_on_validation"]


def pick_on_validation(ranks: Sequence[torch.Tensor], cold: torch.Tensor, metric: str) -> int:
    """Index of the chosen candidate from each candidate's validation target ranks `[U]` (the
    same users in the same order) and the cold users among them (`cold [U]` bool); with no cold
    user, the best mean."""
    if not ranks:
        raise ValueError("no candidates to choose from")
    means = [float(per_user_metric(r, metric).mean()) for r in ranks]
    best = max(range(len(ranks)), key=lambda i: (means[i], -i))
    if not bool(cold.any()):
        return best
    floor = means[best] - standard_error(ranks[best], metric)
    close = [i for i in range(len(ranks)) if means[i] >= floor]
    cold_means = {i: float(per_user_metric(ranks[i][cold], metric).mean()) for i in close}
    return max(close, key=lambda i: (cold_means[i], -i))
