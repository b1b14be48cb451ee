"""The training loss against a naive per-row version; metrics against hand-worked ranks."""

from __future__ import annotations

import math

import pytest
import torch

from crossan.zoo.training.loss import in_batch_debiased_cross_entropy, same_user_mask
from crossan.zoo.training.metrics import metrics_from_ranks, per_user_metric, target_ranks


def naive_loss(user_vectors, items, candidates, log_pop, window, row_user, row_target) -> torch.Tensor:
    losses = []
    for r in range(user_vectors.shape[0]):
        own = set(window[row_user[r]].tolist())
        logits = []
        for c in range(items.shape[0]):
            item = int(candidates[c])
            if item in own and item != int(row_target[r]):
                continue
            logits.append((float(user_vectors[r] @ items[c] - log_pop[c]), item == int(row_target[r])))
        denominator = math.log(sum(math.exp(v) for v, _ in logits))
        positive = next(v for v, is_target in logits if is_target)
        losses.append(denominator - positive)
    return torch.tensor(sum(losses) / len(losses), dtype=torch.float64)


def test_loss_matches_naive_per_row_implementation() -> None:
    torch.manual_seed(0)
    window = torch.tensor([[0, 3, 5, 7], [2, 3, 9, 4], [0, 0, 8, 5]])  # user 1 and 0 share 3, users 0 and 2 share 5
    candidates = torch.unique(window[window != 0])
    inputs, targets = window[:, :-1], window[:, 1:]
    valid = (inputs != 0) & (targets != 0)
    row_user = valid.nonzero()[:, 0]
    row_target = targets[valid]
    user_vectors = torch.randn(len(row_user), 8, dtype=torch.float64)
    items = torch.randn(len(candidates), 8, dtype=torch.float64)
    log_pop = torch.rand(len(candidates), dtype=torch.float64).log()
    masked = same_user_mask(window, candidates, row_user, row_target)
    columns = torch.searchsorted(candidates, row_target)
    loss = in_batch_debiased_cross_entropy(user_vectors @ items.t(), log_pop, columns, masked)
    expected = naive_loss(user_vectors, items, candidates, log_pop, window, row_user, row_target)
    torch.testing.assert_close(loss, expected, atol=1e-10, rtol=1e-10)


def test_same_user_mask_keeps_positive_and_other_users_items() -> None:
    window = torch.tensor([[1, 2, 3], [4, 2, 5]])
    candidates = torch.tensor([1, 2, 3, 4, 5])
    masked = same_user_mask(window, candidates, torch.tensor([0, 1]), torch.tensor([3, 5]))
    assert masked.tolist() == [[True, True, False, False, False], [False, True, False, True, False]]


def test_same_user_mask_joins_windows_of_one_user() -> None:
    window = torch.tensor([[1, 2, 3], [3, 4, 5], [6, 2, 7]])  # windows 0 and 1 belong to one user
    candidates = torch.arange(1, 8)
    row_user, row_target = torch.tensor([0, 1, 2]), torch.tensor([3, 5, 7])
    masked = same_user_mask(window, candidates, row_user, row_target, window_users=torch.tensor([9, 9, 4]))
    assert masked.tolist() == [
        [True, True, False, True, True, False, False],
        [True, True, True, True, False, False, False],
        [False, True, False, False, False, True, False],
    ]
    alone = same_user_mask(window, candidates, row_user, row_target)
    assert alone[0].tolist() == [True, True, False, False, False, False, False]


def test_ranks_hand_worked() -> None:
    scores = torch.tensor([[0.9, 0.5, 0.7, 0.1, 0.7], [0.2, 0.3, 0.4, 0.5, 0.6], [0.9, 0.8, 0.1, 0.1, 0.1]])
    targets = torch.tensor([2, 4, 1])
    masked = torch.zeros_like(scores, dtype=torch.bool)
    masked[0, 0] = True  # removes the only better item; the tie at column 4 still counts
    masked[2, 1] = True  # the target itself is in the history: a miss, never unmasked
    ranks = target_ranks(scores, targets, masked)
    assert ranks.tolist() == [2.0, 1.0, math.inf]
    assert target_ranks(scores, targets, None).tolist() == [3.0, 1.0, 2.0]


def test_hr_and_ndcg_from_ranks() -> None:
    ranks = torch.tensor([1.0, 3.0, 10.0, 11.0, 20.0, math.inf])
    metrics = metrics_from_ranks(ranks)
    assert metrics["HR@10"] == pytest.approx(3 / 6)
    assert metrics["HR@20"] == pytest.approx(5 / 6)
    ndcg10 = (1 + 1 / math.log2(4) + 1 / math.log2(11)) / 6
    assert metrics["NDCG@10"] == pytest.approx(ndcg10)
    assert metrics["NDCG@20"] == pytest.approx(ndcg10 + (1 / math.log2(12) + 1 / math.log2(21)) / 6)
    assert per_user_metric(ranks, "NDCG@10")[-1] == 0
    with pytest.raises(ValueError):
        per_user_metric(ranks, "MRR@10")
