"""The training step's loss as a module: in-batch negatives over the global batch of all processes.

A step's batch of training windows is split over the processes (each holds `B / N` windows).
The candidates every prediction is scored against are the unique items of the whole (global)
batch, so each process first gathers all windows (item indices: cheap), takes the union of
their items, encodes its own share of those items, and gathers the embeddings of the other
shares *with their gradients*. Each process then scores its own windows' predictions against
all candidates, masking a user's own items as in a single process. The loss is the global
batch's mean: the sum over this process's prediction rows divided by the global row count, times
`N` because `DistributedDataParallel` averages the processes' gradients. So N processes with
local batch B/N optimise the loss one process computes for batch B, up to the order of float
additions.

Sampled catalogue items, a cross-batch memory or the full catalogue can join the candidates
(`crossan.zoo.training.negatives.ExtraNegatives`); the same-user masking covers them too.
"""

from __future__ import annotations

import torch
from torch import nn

from crossan.zoo.core.distributed import SINGLE, Processes
from crossan.zoo.data.dataset import PAD
from crossan.zoo.features.store import ItemFeatures
from crossan.zoo.models.recommender import Recommender
from crossan.zoo.training.loss import in_batch_debiased_cross_entropy, same_user_mask
from crossan.zoo.training.negatives import ExtraNegatives

__all__ = ["InBatchObjective"]


class InBatchObjective(nn.Module):
    """Debiased in-batch cross-entropy of one step; returns `(loss to back-propagate, this
    process's summed loss, global prediction count)`."""

    def __init__(
        self, model: Recommender, features: ItemFeatures, negatives: ExtraNegatives, processes: Processes = SINGLE
    ) -> None:
        super().__init__()
        self.model = model
        self.features = features
        self.negatives = negatives
        self.processes = processes

    def forward(
        self, window: torch.Tensor, users: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`window [b, L + 1]` this process's windows (item indices, 0 = padding); `users [b]`
        their users (default: all distinct, so that only sliding windows share a user)."""
        processes, model = self.processes, self.model
        counts = processes.gather_counts(window.shape[0])
        offset = sum(counts[: processes.rank])
        global_window = processes.gather_rows(window, counts)
        # Without `users` every window is its own user's, in the global batch as well.
        global_users = None if users is None else processes.gather_rows(users, counts)
        batch_items = torch.unique(global_window[global_window != PAD])
        candidates = self.negatives.candidates(batch_items)
        item_embeddings = self._encode_candidates(candidates)
        # Only the candidates are encoded, so windows are re-indexed into their table:
        # item candidates[c] becomes c + 1, padding stays PAD.
        columns = torch.searchsorted(candidates, window) + 1
        columns = torch.where(window == PAD, torch.full_like(columns, PAD), columns)
        states = model.sequence_states(model.item_table(item_embeddings), columns[:, :-1])
        targets = window[:, 1:]
        valid = (window[:, :-1] != PAD) & (targets != PAD)
        row_window = valid.nonzero()[:, 0] + offset
        memory = self.negatives.memory
        remembered = memory.read(exclude=candidates) if memory is not None else None
        scored_items, scored_embeddings = candidates, item_embeddings
        if remembered is not None:
            scored_items = torch.cat([candidates, remembered[0]])
            scored_embeddings = torch.cat([item_embeddings, remembered[1].to(item_embeddings.dtype)])
        masked = same_user_mask(global_window, scored_items, row_window, targets[valid], global_users)
        log_weights = self.negatives.log_weights(
            candidates, (global_window != PAD).sum(), None if remembered is None else remembered[0]
        )
        local_sum = in_batch_debiased_cross_entropy(
            model.scores(states[valid], scored_embeddings),
            log_weights,
            columns[:, 1:][valid] - 1,
            masked,
            reduction="sum",
        )
        if memory is not None and self.training:
            memory.write(batch_items, item_embeddings[torch.searchsorted(candidates, batch_items)])
        rows = processes.sum(valid.sum().to(local_sum.dtype))
        return local_sum * processes.world_size / rows, local_sum.detach(), rows

    def _encode_candidates(self, candidates: torch.Tensor) -> torch.Tensor:
        """Embeddings `[U, D]` of the (global) candidates: this process encodes its contiguous
        share and gathers the others' with their gradients."""
        processes = self.processes
        if not processes.distributed:
            return self.model.encode_items(*self.features.gather(candidates - 1))
        count = candidates.numel()
        shares = [processes.shard(count, rank) for rank in range(processes.world_size)]
        size = len(shares[0])
        # Equal-sized shares for the gather: short ones are topped up with a repeated candidate,
        # whose extra embeddings are cut out after the gather (they get no gradient).
        mine = candidates[shares[processes.rank].start : shares[processes.rank].stop]
        rows = torch.cat([mine, candidates[:1].expand(size - len(mine))])
        embeddings = self.model.encode_items(*self.features.gather(rows - 1))
        gathered = processes.gather_rows_with_grad(embeddings).view(processes.world_size, size, -1)
        return torch.cat([gathered[rank, : len(share)] for rank, share in enumerate(shares)])
