"""Leave-one-out full-ranking evaluation of a recommender or the popularity baseline."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from crossan.zoo.data.dataset import PAD, SequenceDataset
from crossan.zoo.features.store import ItemFeatures
from crossan.zoo.models.base import Recommender, decayed_history
from crossan.zoo.training.distributed import SINGLE, Processes
from crossan.zoo.training.metrics import metrics_from_ranks, target_ranks

__all__ = ["EvaluationResult", "left_padded", "evaluate_history_similarity", "evaluate_model", "evaluate_popularity",
           "rank_all_users"]


@dataclass
class EvaluationResult:
    """Mean metrics plus every user's target rank (`inf` = miss because the target was masked)."""

    split: str
    metrics: dict[str, float]
    ranks: torch.Tensor


def left_padded(sequences: list[np.ndarray], length: int) -> torch.Tensor:
    """The last `length` items of each sequence, left-padded with `PAD`, `[B, length]`."""
    out = torch.full((len(sequences), length), PAD, dtype=torch.long)
    for i, seq in enumerate(sequences):
        tail = seq[-length:]
        if len(tail):
            out[i, length - len(tail):] = torch.as_tensor(tail)
    return out


def rank_all_users(dataset: SequenceDataset, split: str, score_users: Callable[[list[int]], torch.Tensor],
                   mask_history: bool = True, batch_size: int = 512, processes: Processes = SINGLE) -> torch.Tensor:
    """Ranks of every user's `split` target, scoring users in batches with `score_users`
    (user indices -> `[B, num_items]` scores over catalogue rows).

    Over several processes each scores its contiguous share of the users, and every process
    gets all ranks back (so all of them take the same early-stopping decision).
    """
    share = processes.shard(dataset.num_users)
    ranks = [torch.empty(0)]
    for start in range(share.start, share.stop, batch_size):
        users = list(range(start, min(start + batch_size, share.stop)))
        scores = score_users(users).float()
        targets = torch.tensor([dataset.target(u, split) - 1 for u in users], device=scores.device)
        masked = None
        if mask_history:
            masked = torch.zeros_like(scores, dtype=torch.bool)
            for i, user in enumerate(users):
                masked[i, torch.as_tensor(dataset.history(user, split) - 1, device=scores.device)] = True
        ranks.append(target_ranks(scores, targets, masked).cpu())
    return processes.gather_rows(torch.cat(ranks))


@torch.no_grad()
def evaluate_model(model: Recommender, dataset: SequenceDataset, features: ItemFeatures, split: str,
                   mask_history: bool = True, batch_size: int = 512, processes: Processes = SINGLE) -> EvaluationResult:
    """HR/NDCG@10/20 of `model` on `split` ("valid" or "test"), full ranking over all items.

    Over several processes, each embeds its share of the catalogue and ranks its share of the
    users; both are gathered, so every process returns the full result.
    """
    was_training = model.training
    model.eval()
    catalogue = processes.shard(features.num_items)
    items = processes.gather_rows(model.catalogue_embeddings(lambda rows: features.gather(rows + catalogue.start),
                                                             len(catalogue)))
    table = model.item_table(items)
    length = model.config.max_seq_len

    def score_users(users: list[int]) -> torch.Tensor:
        window = left_padded([dataset.history(u, split) for u in users], length).to(items.device)
        return model.scores(model.user_embeddings(table, window).float(), items)

    ranks = rank_all_users(dataset, split, score_users, mask_history, batch_size, processes)
    model.train(was_training)
    return EvaluationResult(split, metrics_from_ranks(ranks), ranks)


def evaluate_popularity(dataset: SequenceDataset, split: str, mask_history: bool = True) -> EvaluationResult:
    """Most-popular baseline: every user gets items ranked by training-prefix counts."""
    counts = torch.as_tensor(dataset.train_counts()[1:], dtype=torch.float32)

    def score_users(users: list[int]) -> torch.Tensor:
        return counts.expand(len(users), -1)

    ranks = rank_all_users(dataset, split, score_users, mask_history)
    return EvaluationResult(split, metrics_from_ranks(ranks), ranks)


def evaluate_history_similarity(dataset: SequenceDataset, embeddings: torch.Tensor, split: str, decay: float,
                                window_length: int, mask_history: bool = True) -> EvaluationResult:
    """Untrained baseline: every item scored by the cosine between its row of `embeddings
    [num_items, F]` (frozen backbone embeddings, say) and the user's last `window_length` items'
    rows, pooled with weight `decay ** steps_back`: the frozen-similarity prior on its own."""
    unit = F.normalize(embeddings.float(), dim=-1)
    table = torch.cat([unit.new_zeros(1, unit.shape[1]), unit])

    def score_users(users: list[int]) -> torch.Tensor:
        window = left_padded([dataset.history(u, split) for u in users], window_length)
        pooled = decayed_history(table[window], window == PAD, decay)[:, -1]
        return F.normalize(pooled, dim=-1) @ unit.t()

    ranks = rank_all_users(dataset, split, score_users, mask_history)
    return EvaluationResult(split, metrics_from_ranks(ranks), ranks)
