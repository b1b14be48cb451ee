"""Leave-one-out full-ranking evaluation of a recommender or the popularity baseline."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from crossan.zoo.core.distributed import SINGLE, Processes
from crossan.zoo.data.catalogues import CataloguePart, catalogue_parts
from crossan.zoo.data.dataset import PAD, SequenceDataset
from crossan.zoo.features.store import ItemFeatures
from crossan.zoo.layers.history import decayed_history
from crossan.zoo.models.recommender import Recommender
from crossan.zoo.training.metrics import metrics_from_ranks, standard_error, target_ranks_excluding

__all__ = [
    "EvaluationResult",
    "SCORE_BUDGET",
    "catalogue_metrics",
    "evaluation_users",
    "evaluate_history_similarity",
    "evaluate_model",
    "evaluate_popularity",
    "rank_all_users",
]


SCORE_BUDGET = 1 << 26
"""Scores (float32) one evaluation batch may hold: 256 MiB. Users per batch shrink as the
catalogue grows, so the score matrix never scales with users x items at once."""


@dataclass
class EvaluationResult:
    """Mean metrics plus every ranked user's target rank (`inf` = miss because the target was
    masked); `users` names the ranked users when they are a sample (None: all, in order)."""

    split: str
    metrics: dict[str, float]
    ranks: torch.Tensor
    users: np.ndarray | None = None

    def user_ids(self, dataset: SequenceDataset) -> list[str]:
        """The ids of the ranked users, in the order of `ranks`."""
        return dataset.user_ids if self.users is None else [dataset.user_ids[u] for u in self.users]

    def standard_error(self, name: str) -> float:
        """The standard error of metric `name`'s mean over the ranked users."""
        return standard_error(self.ranks, name)


def catalogue_metrics(
    dataset: SequenceDataset, ranks: torch.Tensor, users: np.ndarray | None
) -> dict[str, dict[str, float]]:
    """Each catalogue's metrics (by label) from the `ranks` of `users` (None: every user, in
    order); catalogues none of `users` belongs to are left out."""
    parts = catalogue_parts(dataset)
    counts = [len(part.local_users(np.arange(dataset.num_users) if users is None else users)) for part in parts]
    pieces = torch.split(ranks, counts)
    return {part.label: metrics_from_ranks(piece) for part, piece in zip(parts, pieces, strict=True) if len(piece)}


def _metrics(dataset: SequenceDataset, ranks: torch.Tensor, users: np.ndarray | None) -> dict[str, float]:
    """The metrics of a ranking: the mean over the ranked users of one catalogue; over several
    catalogues, the mean of the catalogues' means (each catalogue weighs alike, whatever its
    number of users)."""
    if not dataset.parts:
        return metrics_from_ranks(ranks)
    per_catalogue = list(catalogue_metrics(dataset, ranks, users).values())
    return {name: float(np.mean([metrics[name] for metrics in per_catalogue])) for name in per_catalogue[0]}


def _rank_by_catalogue(
    dataset: SequenceDataset,
    users: np.ndarray | None,
    rank_catalogue: Callable[[CataloguePart, np.ndarray | None], torch.Tensor],
) -> torch.Tensor:
    """The ranks of `users` (None: all), each catalogue's users ranked among that catalogue's
    items only by `rank_catalogue(part, its users)`, in combined user order."""
    return torch.cat(
        [rank_catalogue(part, None if users is None else part.local_users(users)) for part in catalogue_parts(dataset)]
    )


EVALUATION_SAMPLE_SEED = 0
"""Seed of the validation sample (not the training seed: every run on a data set ranks the same users)."""


def evaluation_users(num_users: int, sample: int) -> np.ndarray | None:
    """The users a `sample`-user validation ranks: a fixed random choice (the same for every
    epoch, seed and model, so that runs compare on the same users), sorted; None (all users)
    when `sample` is 0 or covers them all."""
    if sample <= 0 or sample >= num_users:
        return None
    return np.sort(np.random.default_rng(EVALUATION_SAMPLE_SEED).choice(num_users, size=sample, replace=False))


def rank_all_users(
    dataset: SequenceDataset,
    split: str,
    score_users: Callable[[np.ndarray], torch.Tensor],
    mask_history: bool = True,
    batch_size: int = 512,
    processes: Processes = SINGLE,
    users: np.ndarray | None = None,
) -> torch.Tensor:
    """Ranks of the `split` targets of `users` (default: every user), scoring users in batches
    with `score_users` (user indices -> `[B, num_items]` scores over catalogue rows).

    A batch holds at most `batch_size` users and `SCORE_BUDGET` scores. Over several processes
    each scores its contiguous share of the users, and every process gets all ranks back (so
    all of them take the same early-stopping decision).
    """
    chosen = np.arange(dataset.num_users) if users is None else np.asarray(users, dtype=np.int64)
    share = processes.shard(len(chosen))
    step = max(1, min(batch_size, SCORE_BUDGET // dataset.num_items))
    targets = dataset.targets(split)[chosen[share.start : share.stop]] - 1
    ranks = [torch.empty(0)]
    for start in range(share.start, share.stop, step):
        batch = chosen[start : min(start + step, share.stop)]
        scores = score_users(batch).float()
        batch_targets = torch.from_numpy(targets[start - share.start : start - share.start + len(batch)])
        rows, columns = (
            dataset.history_items(batch, split)
            if mask_history
            else (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
        )
        ranks.append(
            target_ranks_excluding(
                scores,
                batch_targets.to(scores.device),
                torch.from_numpy(rows).to(scores.device),
                torch.from_numpy(columns - 1).to(scores.device),
                functools.partial(_user_name, dataset.user_ids, batch),
            ).cpu()
        )
        del scores  # before the next batch's scores exist, not after: one batch in memory at a time
    return processes.gather_rows(torch.cat(ranks))


@torch.no_grad()
def evaluate_model(
    model: Recommender,
    dataset: SequenceDataset,
    features: ItemFeatures,
    split: str,
    mask_history: bool = True,
    batch_size: int = 512,
    processes: Processes = SINGLE,
    users: np.ndarray | None = None,
) -> EvaluationResult:
    """HR/NDCG@10/20 of `model` on `split` ("valid" or "test"), full ranking over all items,
    for `users` (default: every user).

    Over several processes, each embeds its share of the catalogue and ranks its share of the
    users; both are gathered, so every process returns the full result.
    """
    was_training = model.training
    model.eval()
    catalogue = processes.shard(features.num_items)
    items = processes.gather_rows(
        model.catalogue_embeddings(lambda rows: features.gather(rows + catalogue.start), len(catalogue))
    )
    table = model.item_table(items)
    length = model.config.max_seq_len

    def rank_catalogue(part: CataloguePart, part_users: np.ndarray | None) -> torch.Tensor:
        part_items = items[part.item_rows]

        def score_users(batch: np.ndarray) -> torch.Tensor:
            window = part.combined_windows(part.dataset.recent_histories(batch, split, length))
            return model.scores(
                model.user_embeddings(table, torch.from_numpy(window).to(items.device)).float(), part_items
            )

        return rank_all_users(part.dataset, split, score_users, mask_history, batch_size, processes, part_users)

    ranks = _rank_by_catalogue(dataset, users, rank_catalogue)
    model.train(was_training)
    return EvaluationResult(split, _metrics(dataset, ranks, users), ranks, users)


def evaluate_popularity(
    dataset: SequenceDataset, split: str, mask_history: bool = True, users: np.ndarray | None = None
) -> EvaluationResult:
    """Most-popular baseline: every user gets the items of their catalogue ranked by
    training-prefix counts, for `users` (default: every user)."""
    ranks = _rank_by_catalogue(
        dataset, users, lambda part, part_users: _popularity_ranks(part.dataset, split, mask_history, part_users)
    )
    return EvaluationResult(split, _metrics(dataset, ranks, users), ranks, users)


def _popularity_ranks(
    dataset: SequenceDataset, split: str, mask_history: bool, users: np.ndarray | None
) -> torch.Tensor:
    """Popularity's target ranks in one catalogue.

    Every user ranks the same scores, so no score matrix is needed: the items counted at least
    as often as the target are found by a binary search in the sorted counts, and the user's
    masked history items among them are taken back, which ranks exactly as `rank_all_users`
    would, in time linear in the users' histories.
    """
    chosen = np.arange(dataset.num_users) if users is None else np.asarray(users, dtype=np.int64)
    counts = dataset.train_counts()[1:]
    targets = dataset.targets(split)[chosen]
    target_counts = counts[targets - 1]
    at_least = len(counts) - np.searchsorted(np.sort(counts), target_counts, side="left")
    ranks = at_least.astype(np.float64)
    if mask_history:
        rows, items = dataset.history_items(chosen, split)
        pairs = np.unique(rows * (len(counts) + 1) + items)  # each masked item once per user
        rows, items = pairs // (len(counts) + 1), pairs % (len(counts) + 1)
        counted = counts[items - 1] >= target_counts[rows]
        ranks -= np.bincount(rows[counted], minlength=len(chosen))
        ranks[rows[items == targets[rows]]] = np.inf
    return torch.from_numpy(ranks).float()


def evaluate_history_similarity(
    dataset: SequenceDataset,
    embeddings: torch.Tensor,
    split: str,
    decay: float,
    window_length: int,
    mask_history: bool = True,
) -> EvaluationResult:
    """Untrained baseline: every item of the user's catalogue scored by the cosine between its
    row of `embeddings [num_items, F]` (frozen backbone embeddings, say) and the user's last
    `window_length` items' rows, pooled with weight `decay ** steps_back`: the frozen-similarity
    prior on its own."""
    unit = F.normalize(embeddings.float(), dim=-1)

    def rank_catalogue(part: CataloguePart, part_users: np.ndarray | None) -> torch.Tensor:
        part_unit = unit[part.item_rows]
        table = torch.cat([part_unit.new_zeros(1, part_unit.shape[1]), part_unit])

        def score_users(batch: np.ndarray) -> torch.Tensor:
            window = torch.from_numpy(part.dataset.recent_histories(batch, split, window_length))
            pooled = decayed_history(table[window], window == PAD, decay)[:, -1]
            return F.normalize(pooled, dim=-1) @ part_unit.t()

        return rank_all_users(part.dataset, split, score_users, mask_history)

    ranks = _rank_by_catalogue(dataset, None, rank_catalogue)
    return EvaluationResult(split, _metrics(dataset, ranks, None), ranks)


def _user_name(user_ids: list[str], batch: np.ndarray, row: int) -> str:
    """How a message names row `row` of a scored batch of users (`batch`: their indices)."""
    return f"user {user_ids[batch[row]]!r}"
