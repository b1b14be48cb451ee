"""Paired t-test over per-user metrics, and the users whose target is a cold item."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from crossan.zoo.data.dataset import SequenceDataset
from crossan.zoo.experiments.report import per_user_values
from crossan.zoo.training.metrics import METRIC_NAMES
from crossan.zoo.training.significance import cold_item_users, paired_t_test

FIRST_RANKS = torch.tensor([1.0, 3.0, 15.0, math.inf, 2.0, 25.0])
SECOND_RANKS = torch.tensor([2.0, 12.0, 5.0, 30.0, 1.0, 8.0])


def _ndcg(rank: float) -> float:
    return 1 / math.log2(rank + 1)


# Per-user values worked out by hand from the ranks above (a miss, or a masked target, is 0).
PER_USER = {
    "HR@10": ([1, 1, 0, 0, 1, 0], [1, 0, 1, 0, 1, 1]),
    "HR@20": ([1, 1, 1, 0, 1, 0], [1, 1, 1, 0, 1, 1]),
    "NDCG@10": ([1, _ndcg(3), 0, 0, _ndcg(2), 0], [_ndcg(2), 0, _ndcg(5), 0, 1, _ndcg(8)]),
    "NDCG@20": ([1, _ndcg(3), _ndcg(15), 0, _ndcg(2), 0], [_ndcg(2), _ndcg(12), _ndcg(5), 0, 1, _ndcg(8)]),
}


def test_metric_names_are_hr_then_ndcg_at_each_cutoff() -> None:
    assert METRIC_NAMES == ("HR@10", "HR@20", "NDCG@10", "NDCG@20")


def test_paired_t_test_matches_a_hand_computation() -> None:
    result = paired_t_test(FIRST_RANKS, SECOND_RANKS)
    assert set(result) == set(METRIC_NAMES)
    assert result["HR@10"]["mean_difference"] == pytest.approx(-1 / 6)
    assert result["HR@20"]["mean_difference"] == pytest.approx(-1 / 6)
    for name, (first, second) in PER_USER.items():
        differences = np.array(first) - np.array(second)
        n = len(differences)
        t = differences.mean() / (differences.std(ddof=1) / math.sqrt(n))
        p_value = 2 * stats.t.sf(abs(t), df=n - 1)
        assert result[name]["mean_difference"] == pytest.approx(differences.mean(), abs=1e-6)
        assert result[name]["p_value"] == pytest.approx(p_value, rel=1e-5)
    # HR@10: differences 0, 1, -1, 0, 0, -1 give t = -0.542 on 5 degrees of freedom.
    assert result["HR@10"]["p_value"] == pytest.approx(0.611, abs=1e-3)


def test_paired_t_test_is_antisymmetric_in_the_mean_difference() -> None:
    forward, backward = paired_t_test(FIRST_RANKS, SECOND_RANKS), paired_t_test(SECOND_RANKS, FIRST_RANKS)
    for name in METRIC_NAMES:
        assert forward[name]["mean_difference"] == pytest.approx(-backward[name]["mean_difference"])
        assert forward[name]["p_value"] == pytest.approx(backward[name]["p_value"])


def test_identical_ranks_differ_by_nothing() -> None:
    result = paired_t_test(FIRST_RANKS, FIRST_RANKS.clone())
    for name in METRIC_NAMES:
        assert result[name]["mean_difference"] == 0.0
        # Every difference is 0, so t is 0/0: scipy gives no p-value rather than a made-up one.
        assert math.isnan(result[name]["p_value"])


def _tiny_dataset() -> SequenceDataset:
    # Training prefixes (all but the last two items): [1, 2], [2], [3, 1] -> items 1, 2, 3 are seen.
    sequences = [np.array([1, 2, 3, 4]), np.array([2, 3, 1]), np.array([3, 1, 5, 2])]
    return SequenceDataset.from_sequences(
        name="tiny",
        root=Path("tiny"),
        item_ids=[f"i{n}" for n in range(1, 6)],
        user_ids=["u0", "u1", "u2"],
        sequences=sequences,
    )


def test_cold_item_users_are_those_whose_target_no_training_prefix_holds() -> None:
    dataset = _tiny_dataset()
    # Test targets 4, 1, 2: item 4 is never in a prefix (only user 0's test target).
    assert cold_item_users(dataset, "test").tolist() == [True, False, False]
    # Valid targets 3, 3, 5: item 3 is in user 2's prefix only, which counts; item 5 is in none.
    assert cold_item_users(dataset, "valid").tolist() == [False, False, True]
    assert cold_item_users(dataset, "test").dtype == torch.bool


def test_tiny_p_values_do_not_underflow_to_zero() -> None:
    # 2,000 users, hits 42% against 25%: t is about 15, p about 1e-49, below float32's range.
    first = torch.tensor([1.0 if u % 100 < 42 else 100.0 for u in range(2000)])
    second = torch.tensor([1.0 if u % 100 < 25 else 100.0 for u in range(2000)])
    p_value = paired_t_test(first, second)["HR@10"]["p_value"]
    assert 0 < p_value < 1e-40
    ranks = [[1 if u % 100 < 42 else None for u in range(2000)]], [[1 if u % 100 < 25 else None for u in range(2000)]]
    assert per_user_values(ranks[0], "HR@10").dtype == np.float64
