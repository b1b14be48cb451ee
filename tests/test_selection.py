"""The rule that picks a setting on validation: the mean to within its standard error, then cold users."""

from __future__ import annotations

import math

import pytest
import torch

from crossan.zoo.training.metrics import per_user_metric, standard_error
from crossan.zoo.training.selection import pick_on_validation

METRIC = "NDCG@10"


def ranks(hits: list[int], users: int = 400) -> torch.Tensor:
    """Target ranks: rank 1 (a hit, NDCG 1) for the users in `hits`, a miss (inf) for the rest."""
    values = torch.full((users,), math.inf)
    values[hits] = 1.0
    return values


def test_a_close_candidate_better_on_cold_users_wins_and_a_far_one_does_not() -> None:
    cold = torch.zeros(400, dtype=torch.bool)
    cold[:100] = True
    best = ranks(list(range(100, 200)))  # mean 0.25, nothing on cold users
    close = ranks(list(range(104, 200)) + [0, 1])  # mean 0.245: 2 hits fewer, 2 cold hits
    far = ranks(list(range(150, 200)) + list(range(40)))  # mean 0.225, 40 cold hits
    se = standard_error(best, METRIC)
    assert 0.25 - se < 0.245 and 0.225 < 0.25 - se, "the candidates must sit on both sides of the floor"
    assert pick_on_validation([best, close, far], cold, METRIC) == 1
    assert pick_on_validation([best, far], cold, METRIC) == 0


def test_without_cold_users_or_on_ties_the_first_best_mean_wins() -> None:
    none_cold = torch.zeros(400, dtype=torch.bool)
    best = ranks(list(range(100)))
    assert pick_on_validation([ranks(list(range(90))), best, best.clone()], none_cold, METRIC) == 1
    cold = torch.arange(400) < 50
    assert pick_on_validation([best, best.clone()], cold, METRIC) == 0
    assert float(per_user_metric(best[cold], METRIC).mean()) == 1.0


def test_no_candidates_is_an_error() -> None:
    with pytest.raises(ValueError, match="no candidates"):
        pick_on_validation([], torch.zeros(3, dtype=torch.bool), METRIC)
