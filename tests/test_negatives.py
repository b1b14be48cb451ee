"""Extra negatives: sampled catalogue items, the cross-batch memory and the full softmax, against
hand-computed losses; the same-user masking and the sampling correction on every candidate."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import crossan
from crossan.zoo.core.errors import ConfigError
from crossan.zoo.features.store import ItemFeatures
from crossan.zoo.training.negatives import CrossBatchMemory, ExtraNegatives, sampling_log_weights
from crossan.zoo.training.objective import InBatchObjective
from crossan.zoo.training.trainer import TrainConfig

NUM_ITEMS = 12
# Users 0 and 1 share item 3; item 9 is only user 1's.
WINDOW = torch.tensor([[0, 3, 5, 7], [2, 3, 9, 4], [0, 0, 8, 5]])


@pytest.fixture
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = crossan.create_model("sasrec-id", num_items=NUM_ITEMS, max_seq_len=3, dropout=0.0, attention_dropout=0.0)
    return model.double().eval()


def popularity() -> torch.Tensor:
    counts = torch.arange(NUM_ITEMS + 1, dtype=torch.float64)
    counts[0] = 0
    return counts / counts.sum()


def objective(model: torch.nn.Module, **options) -> InBatchObjective:
    return InBatchObjective(model, ItemFeatures(NUM_ITEMS), ExtraNegatives(popularity(), **options))


def hand_loss(model: torch.nn.Module, columns: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """Mean over prediction rows of the corrected cross-entropy over `columns` (item indices),
    each row's own items other than its target removed."""
    table = model.item_table(model.encode_items(torch.arange(NUM_ITEMS)))
    states = model.sequence_states(table, WINDOW[:, :-1])
    losses = []
    for user in range(WINDOW.shape[0]):
        for position in range(WINDOW.shape[1] - 1):
            item, target = WINDOW[user, position], WINDOW[user, position + 1]
            if item == 0 or target == 0:
                continue
            own = set(WINDOW[user].tolist()) - {int(target)}
            keep = torch.tensor([int(c) not in own for c in columns])
            logits = (table[columns] @ states[user, position] - log_q)[keep]
            target_column = int((columns[keep] == target).nonzero())
            losses.append(F.cross_entropy(logits.unsqueeze(0), torch.tensor([target_column])))
    return torch.stack(losses).mean()


def test_plain_objective_is_the_popularity_corrected_in_batch_loss(model: torch.nn.Module) -> None:
    loss, _, rows = objective(model)(WINDOW)
    candidates = torch.unique(WINDOW[WINDOW != 0])
    assert int(rows) == 6
    torch.testing.assert_close(loss, hand_loss(model, candidates, popularity()[candidates].log()))


@pytest.mark.parametrize("strength", [0.0, 0.5])
def test_sampling_correction_scales_log_q(model: torch.nn.Module, strength: float) -> None:
    """`sampling_correction = a` subtracts `a log q`; 0 is the plain in-batch softmax."""
    loss, _, _ = objective(model, correction=strength)(WINDOW)
    candidates = torch.unique(WINDOW[WINDOW != 0])
    torch.testing.assert_close(loss, hand_loss(model, candidates, strength * popularity()[candidates].log()))
    full, _, _ = objective(model)(WINDOW)
    assert abs(float(loss) - float(full)) > 1e-3


@pytest.mark.parametrize(
    ("strength", "message"),
    [
        (-0.1, "sampling_correction must lie in"),
        (1.5, "sampling_correction must lie in"),
        (True, r"sampling_correction needs a number, got True \(bool\)"),
    ],
)
def test_sampling_correction_outside_zero_to_one_is_refused(strength: float, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TrainConfig(sampling_correction=strength)


@pytest.mark.parametrize("sampling", ["uniform", "popularity"])
def test_sampled_negatives_join_the_pool_with_their_correction(model: torch.nn.Module, sampling: str) -> None:
    negatives = ExtraNegatives(popularity(), sampled=40, sampling=sampling)
    torch.manual_seed(3)
    loss, _, _ = InBatchObjective(model, ItemFeatures(NUM_ITEMS), negatives)(WINDOW)
    torch.manual_seed(3)
    candidates = negatives.candidates(torch.unique(WINDOW[WINDOW != 0]))
    assert len(candidates) > 8 and set(WINDOW[WINDOW != 0].tolist()) <= set(candidates.tolist())
    p_sampled = (
        torch.full((NUM_ITEMS + 1,), 1 / NUM_ITEMS, dtype=torch.float64) if sampling == "uniform" else popularity()
    )
    slots = int((WINDOW != 0).sum())
    at_least_once = 1 - (1 - p_sampled[candidates]) ** 40  # drawn items are de-duplicated
    log_q = (slots * popularity()[candidates] + at_least_once).log()
    torch.testing.assert_close(negatives.log_weights(candidates, slots, None), log_q)
    torch.testing.assert_close(loss, hand_loss(model, candidates, log_q))


def test_full_softmax_scores_every_item_without_correction(model: torch.nn.Module) -> None:
    loss, _, _ = objective(model, full_softmax=True)(WINDOW)
    every = torch.arange(1, NUM_ITEMS + 1)
    torch.testing.assert_close(loss, hand_loss(model, every, torch.zeros(NUM_ITEMS, dtype=torch.float64)))


def test_memory_keeps_the_newest_embedding_of_recent_items_only() -> None:
    memory = CrossBatchMemory(size=3, max_age=2)
    memory.write(torch.tensor([1, 2]), torch.tensor([[1.0], [2.0]]))
    memory.write(torch.tensor([2, 3]), torch.tensor([[20.0], [30.0]]))
    items, embeddings = memory.read(exclude=torch.tensor([3]))
    assert items.tolist() == [2, 1] and embeddings.squeeze(1).tolist() == [20.0, 1.0]
    memory.write(torch.tensor([4, 5]), torch.tensor([[4.0], [5.0]]))  # step 1 is now too old
    items, _ = memory.read(exclude=torch.tensor([], dtype=torch.long))
    assert items.tolist() == [4, 5, 2]  # newest first, 3 of the 4 stored
    memory.clear()
    assert memory.read(exclude=torch.tensor([1])) is None


def test_memory_adds_detached_columns_and_is_filled_only_in_training(model: torch.nn.Module) -> None:
    loss_fn = objective(model, memory_size=50, memory_max_age=3)
    memory = loss_fn.negatives.memory
    loss_fn.train()
    loss_fn(WINDOW[[0]])  # items 3, 5, 7 go to the memory
    model.item_embedding.weight.grad = None
    second, _, _ = loss_fn(WINDOW[[2]])  # candidates 8, 5; memory adds 3 and 7 (5 is fresh)
    second.backward()
    items, embeddings = memory.read(exclude=torch.tensor([8, 5]))
    assert sorted(items.tolist()) == [3, 7] and not embeddings.requires_grad
    grad = model.item_embedding.weight.grad
    assert grad[[2, 6]].abs().sum() == 0  # rows of items 3 and 7: scored from the memory, no gradient
    # One prediction row (8 -> 5); its own item 8 is masked; 2 batch slots, 2 memory entries
    # (each item at most once: an inclusion probability).
    scored = torch.tensor([5, 3, 7])
    table = model.item_table(model.encode_items(torch.arange(NUM_ITEMS)))
    state = model.sequence_states(table, WINDOW[[2], :-1])[0, 2]
    p = popularity()[scored]
    logits = table[scored] @ state - (2 * p + 1 - (1 - p) ** 2).log()
    torch.testing.assert_close(second, F.cross_entropy(logits.unsqueeze(0), torch.tensor([0])))
    loss_fn.eval()
    loss_fn(WINDOW[[1]])
    assert 2 not in memory.read(exclude=torch.tensor([], dtype=torch.long))[0].tolist()


def test_memory_entries_count_as_popularity_draws_beside_sampled_ones() -> None:
    negatives = ExtraNegatives(popularity(), sampled=10, memory_size=5)
    columns = torch.tensor([1, 2, 3, 4, 5])
    p = popularity()[columns]
    expected = (6 * p + (1 - (1 - p) ** 3) + (1 - (1 - 1 / NUM_ITEMS) ** 10)).log()
    torch.testing.assert_close(negatives.log_weights(columns[:2], 6, columns[2:]), expected)


def test_memory_term_is_an_inclusion_probability_so_popular_items_are_not_overstated() -> None:
    """A memory of K de-duplicated entries holds an item at most once: its term stays below 1 for a
    popular item (K * p would be 8 here) and is K * p for a rare one."""
    probability = torch.tensor([0.0, 0.002, 1e-7], dtype=torch.float64)
    memory = torch.arange(4000) % 2 + 1
    q = sampling_log_weights(torch.tensor([1, 2]), probability, batch_slots=100, memory_entries=memory).exp()
    assert 0.2 + 0.99 < q[0] < 0.2 + 1
    torch.testing.assert_close(q[1], torch.tensor(4100 * 1e-7, dtype=torch.float64), rtol=1e-3, atol=0)


def test_correction_is_a_constant_shift_without_extra_negatives() -> None:
    candidates = torch.tensor([1, 4, 7])
    shifted = sampling_log_weights(candidates, popularity(), batch_slots=9)
    torch.testing.assert_close(
        shifted - popularity()[candidates].log(),
        torch.full((3,), torch.tensor(9.0, dtype=torch.float64).log().item(), dtype=torch.float64),
    )


@pytest.mark.parametrize(
    "options, message",
    [
        ({"full_softmax": True, "sampled_negatives": 5}, "full_softmax scores every item already"),
        ({"full_softmax": True, "memory_size": 5}, "full_softmax scores every item already"),
        ({"negative_sampling": "hard"}, "negative_sampling must be one of uniform, popularity"),
        ({"sampled_negatives": -1}, "sampled_negatives must be a non-negative integer"),
        ({"memory_max_age": 0}, "memory_max_age must be at least 1"),
        ({"full_softmax": "yes"}, "full_softmax needs true or false, got 'yes'"),
    ],
)
def test_bad_negative_options_are_one_line_errors(options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**options)


@pytest.mark.parametrize("sampling", ["uniform", "popularity"])
def test_sampling_never_draws_the_padding_index(sampling: str) -> None:
    """The trainer's add-one smoothed popularity gives index 0 (padding) some mass; it must never
    be drawn (it has no features, and gathering row -1 fails)."""
    smoothed = popularity() + 1.0 / NUM_ITEMS
    negatives = ExtraNegatives(smoothed / smoothed.sum(), sampled=4000, sampling=sampling)
    torch.manual_seed(0)
    candidates = negatives.candidates(torch.tensor([1, 2]))
    assert int(candidates.min()) == 1 and len(candidates) == NUM_ITEMS
