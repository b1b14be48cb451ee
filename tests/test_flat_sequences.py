"""The flat sequence layout: whole-array helpers agree with a per-user reading of the same data,
and ranking in score-budgeted batches or over a user sample changes no rank."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from crossan.zoo.core.errors import ConfigError
from crossan.zoo.data import read_microlens
from crossan.zoo.data.dataset import PAD, SequenceDataset
from crossan.zoo.training import evaluation
from crossan.zoo.training.evaluation import evaluate_popularity, evaluation_users, rank_all_users
from crossan.zoo.training.trainer import TrainConfig


def random_dataset(seed: int = 0, users: int = 40, items: int = 30) -> tuple[SequenceDataset, list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    sequences = [rng.integers(1, items + 1, size=int(rng.integers(3, 15))) for _ in range(users)]
    dataset = SequenceDataset.from_sequences(
        "random", Path("."), [f"i{n}" for n in range(items)], [f"u{n}" for n in range(users)], sequences
    )
    return dataset, sequences


@pytest.mark.parametrize("split", ["train", "valid", "test"])
def test_whole_array_helpers_match_each_users_sequence(split: str) -> None:
    dataset, sequences = random_dataset()
    cut = 1 if split == "test" else 2
    users = np.array([5, 0, 39, 5, 17])
    windows = dataset.recent_histories(users, split, 6)
    rows, items = dataset.history_items(users, split)
    for row, user in enumerate(users):
        history = sequences[user][:-cut]
        assert dataset.history(user, split).tolist() == history.tolist()
        tail = history[-6:].tolist()
        assert windows[row].tolist() == [PAD] * (6 - len(tail)) + tail
        assert items[rows == row].tolist() == history.tolist()
        if split != "train":
            assert dataset.targets(split)[user] == sequences[user][-cut] == dataset.target(user, split)
    expected = np.zeros(dataset.num_items + 1, dtype=np.int64)
    for sequence in sequences:
        np.add.at(expected, sequence[:-2], 1)
    assert dataset.train_counts().tolist() == expected.tolist()


def test_a_user_below_three_interactions_or_bad_offsets_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 3"):
        SequenceDataset.from_sequences("short", Path("."), ["a", "b"], ["u"], [np.array([1, 2])])
    with pytest.raises(ValueError, match="offsets"):
        SequenceDataset("bad", Path("."), ["a"], ["u"], np.array([1, 1, 1]), np.array([0, 2]))


def popularity_scores(dataset: SequenceDataset):
    counts = torch.as_tensor(dataset.train_counts()[1:], dtype=torch.float32)
    return lambda batch: counts.expand(len(batch), -1)


def test_ranks_do_not_depend_on_the_score_budget(toy_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dataset = read_microlens(toy_root, name="toy")
    whole = rank_all_users(dataset, "valid", popularity_scores(dataset))
    monkeypatch.setattr(evaluation, "SCORE_BUDGET", 3 * dataset.num_items)  # three users per batch
    assert torch.equal(rank_all_users(dataset, "valid", popularity_scores(dataset)), whole)


@pytest.mark.parametrize("mask_history", [True, False])
@pytest.mark.parametrize("split", ["valid", "test"])
def test_popularity_ranks_without_a_score_matrix_as_the_generic_ranking_does(
    toy_root: Path, mask_history: bool, split: str
) -> None:
    for dataset in (read_microlens(toy_root, name="toy"), random_dataset(seed=3, items=12)[0]):
        generic = rank_all_users(dataset, split, popularity_scores(dataset), mask_history)
        fast = evaluate_popularity(dataset, split, mask_history)
        assert torch.equal(fast.ranks, generic) and fast.users is None
        if mask_history and dataset.name == "random":
            assert torch.isinf(generic).any()  # some targets repeat a history item
        sample = np.array([0, 3, 7])
        assert torch.equal(evaluate_popularity(dataset, split, mask_history, sample).ranks, generic[sample])


def test_a_user_sample_ranks_exactly_those_users_the_same_way_every_time(toy_root: Path) -> None:
    dataset = read_microlens(toy_root, name="toy")
    sample = evaluation_users(dataset.num_users, 50)
    assert sample is not None and len(set(sample.tolist())) == 50 and (np.diff(sample) > 0).all()
    assert np.array_equal(sample, evaluation_users(dataset.num_users, 50))
    assert evaluation_users(dataset.num_users, 0) is None
    assert evaluation_users(dataset.num_users, dataset.num_users + 1) is None
    ranks = rank_all_users(dataset, "valid", popularity_scores(dataset), users=sample)
    assert torch.equal(ranks, rank_all_users(dataset, "valid", popularity_scores(dataset))[torch.from_numpy(sample)])
    with pytest.raises(ConfigError, match="valid_users"):
        TrainConfig(valid_users=-1)
