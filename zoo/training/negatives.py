"""Negatives beyond the batch's own items, and the sampling correction that keeps the loss unbiased.

The in-batch loss scores each prediction against the unique items of the (global) batch. Three
options add candidates, each as a training setting (`TrainConfig`):

- `sampled_negatives = M`: M catalogue items drawn each step, uniformly or by popularity
  (mixed negative sampling, Yi et al. 2020), encoded with the batch's items;
- `memory_size = K`: a cross-batch memory of the item embeddings computed in recent steps
  (detached: no gradient flows into the past), at most `memory_max_age` steps old;
- `full_softmax`: every catalogue item is a candidate in every step (what RecBole's SASRec
  does), with no sampling correction since nothing is sampled.

Correction. A candidate pool drawn from a proposal q over-represents items q favours; the
sampled softmax subtracts `log q(item)` from every candidate's score (the target's included) so
that the loss estimates the full softmax. Here the pool mixes three sources and q is the
expected number of columns an item gets from them:
`n_batch * p(item) + (1 - (1 - p(item)) ** n_memory) + (1 - (1 - p_sampled(item)) ** M)`, where
`p` is the (add-one smoothed) training popularity that batch items follow, `n_batch` the number
of item slots in the batch and `n_memory` the memory's entries (batch items of earlier steps).
The batch term is the paper's in-batch correction, kept so that the default loss is the paper's.
The memory and the sampled items give an item at most one column each (they are de-duplicated),
so their terms are inclusion probabilities: counting them as `n * p` instead would overstate a
popular item's q by a factor of up to `n * p`. Without extra
negatives q is `n_batch * p(item)`, a shift by a constant of every row's logits, so the loss
equals the plain in-batch debiased loss; for rare items the inclusion terms are `n * p` too.
`sampling_correction = a` subtracts `a log q` instead: 1 is the estimate of the full softmax,
0 the uncorrected softmax over the pool, which scores items by how much more often they follow
a user's history than chance (rare items gain, popular ones lose).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import torch

from crossan.zoo.core.distributed import SINGLE, Processes
from crossan.zoo.core.errors import ConfigError

__all__ = [
    "CrossBatchMemory",
    "ExtraNegatives",
    "NEGATIVE_SAMPLING",
    "check_negative_options",
    "inclusion_probability",
    "sampling_log_weights",
]

NEGATIVE_SAMPLING = ("uniform", "popularity")


def check_negative_options(
    sampled: int, sampling: str, memory_size: int, memory_max_age: int, full_softmax: bool, correction: float = 1.0
) -> None:
    """One-line `ConfigError` for settings of the extra negatives that cannot work together."""
    if sampling not in NEGATIVE_SAMPLING:
        raise ConfigError(f"negative_sampling must be one of {', '.join(NEGATIVE_SAMPLING)}, got {sampling!r}")
    for name, value in (
        ("sampled_negatives", sampled),
        ("memory_size", memory_size),
        ("memory_max_age", memory_max_age),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ConfigError(f"{name} must be a non-negative integer, got {value!r}")
    if memory_max_age < 1:
        raise ConfigError(f"memory_max_age must be at least 1 step, got {memory_max_age}")
    if not isinstance(full_softmax, bool):
        raise ConfigError(f"full_softmax must be true or false, got {full_softmax!r}")
    if isinstance(correction, bool) or not isinstance(correction, (int, float)) or not 0.0 <= correction <= 1.0:
        raise ConfigError(f"sampling_correction must lie in [0, 1], got {correction!r}")
    if full_softmax and (sampled or memory_size):
        raise ConfigError("full_softmax scores every item already: it takes no sampled_negatives or memory_size")


def sampling_log_weights(
    candidates: torch.Tensor,
    probability: torch.Tensor,
    batch_slots: int | torch.Tensor,
    memory_entries: torch.Tensor | None = None,
    sampled: int = 0,
    sampled_probability: torch.Tensor | None = None,
) -> torch.Tensor:
    """`log q` of each candidate `[U]` (1-based item indices): its expected number of columns.

    `probability [N + 1]` is the popularity batch items follow, `batch_slots` the batch's item
    slots (a tensor keeps the step free of a device sync), `memory_entries` the memory's item
    indices (their count is the number of popularity draws behind the memory), `sampled` the
    number of catalogue draws from `sampled_probability [N + 1]`.
    """
    p = probability[candidates]
    expected = batch_slots * p
    if memory_entries is not None:
        expected = expected + inclusion_probability(p, memory_entries.numel())
    if sampled:
        if sampled_probability is None:
            raise ValueError("sampled catalogue draws need sampled_probability")
        expected = expected + inclusion_probability(sampled_probability[candidates], sampled)
    return expected.log()


def inclusion_probability(probability: torch.Tensor, draws: int) -> torch.Tensor:
    """`1 - (1 - probability) ** draws`: the chance that `draws` independent draws give the item
    at least once (computed without cancellation for small probabilities)."""
    return -torch.expm1(draws * torch.log1p(-probability))


@dataclass
class _StepEntries:
    step: int
    items: torch.Tensor
    embeddings: torch.Tensor


class CrossBatchMemory:
    """The item embeddings of recent steps (detached), as extra negatives.

    `write` adds a step's batch items; `read` returns the newest embedding of every item written
    at most `max_age` steps ago, newest first, at most `size` of them, leaving out `exclude` (the
    current step's candidates, whose fresh embeddings replace them). The memory is emptied at the
    start of every epoch (`clear`), so a checkpoint taken between epochs holds everything a
    resumed run needs.
    """

    def __init__(self, size: int, max_age: int) -> None:
        if size < 1 or max_age < 1:
            raise ConfigError(f"memory_size and memory_max_age must be positive, got {size} and {max_age}")
        self.size = size
        self.max_age = max_age
        self._steps: deque[_StepEntries] = deque()
        self._step = 0

    def clear(self) -> None:
        self._steps.clear()

    def write(self, items: torch.Tensor, embeddings: torch.Tensor) -> None:
        """Add this step's unique `items [U]` and their `embeddings [U, D]`, and advance the step.
        Older entries of the same items are dropped, so the memory holds one entry per item."""
        self._step += 1
        for entry in self._steps:
            older = ~torch.isin(entry.items, items)
            entry.items, entry.embeddings = entry.items[older], entry.embeddings[older]
        self._steps.append(_StepEntries(self._step, items.detach(), embeddings.detach()))
        while self._steps and self._steps[0].step <= self._step - self.max_age:
            self._steps.popleft()

    def read(self, exclude: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """`(items [K], embeddings [K, D])` of the memory, newest first, or None when it is empty."""
        if not self._steps:
            return None
        items = torch.cat([entry.items for entry in reversed(self._steps)])
        embeddings = torch.cat([entry.embeddings for entry in reversed(self._steps)])
        kept = (~torch.isin(items, exclude)).nonzero().squeeze(1)[: self.size]
        if kept.numel() == 0:
            return None
        return items[kept], embeddings[kept]


class ExtraNegatives:
    """The candidates a step adds to its batch items, and their sampling correction.

    One instance per trainer; every process holds the same memory, since all of them see the
    global candidates' embeddings. Sampled items are drawn by each process for its share and
    gathered, so every process scores against the same pool.
    """

    def __init__(
        self,
        probability: torch.Tensor,
        sampled: int = 0,
        sampling: str = "uniform",
        memory_size: int = 0,
        memory_max_age: int = 1,
        full_softmax: bool = False,
        correction: float = 1.0,
        processes: Processes = SINGLE,
    ) -> None:
        check_negative_options(sampled, sampling, memory_size, memory_max_age, full_softmax, correction)
        self.correction = correction
        self.probability = probability
        self.num_items = probability.numel() - 1
        self.sampled = sampled
        self.full_softmax = full_softmax
        self.processes = processes
        self.memory = CrossBatchMemory(memory_size, memory_max_age) if memory_size else None
        # Index 0 is padding: never drawn, whatever mass the given probability puts on it.
        sampled_probability = (
            torch.full_like(probability, 1.0 / self.num_items) if sampling == "uniform" else probability.clone()
        )
        sampled_probability[0] = 0.0
        self.sampled_probability = sampled_probability

    def start_epoch(self) -> None:
        if self.memory is not None:
            self.memory.clear()

    def candidates(self, batch_items: torch.Tensor) -> torch.Tensor:
        """Sorted unique item indices to encode this step: the batch's, plus the sampled ones
        (or every item for the full softmax)."""
        if self.full_softmax:
            return torch.arange(1, self.num_items + 1, device=batch_items.device)
        if not self.sampled:
            return batch_items
        share = len(self.processes.shard(self.sampled))
        drawn = torch.multinomial(self.sampled_probability, share, replacement=True)
        drawn = self.processes.gather_rows(drawn.to(self.processes.device)).to(batch_items.device)
        return torch.unique(torch.cat([batch_items, drawn]))

    def log_weights(
        self, candidates: torch.Tensor, batch_slots: int | torch.Tensor, memory_items: torch.Tensor | None
    ) -> torch.Tensor:
        """The correction `a log q` of every column: the encoded `candidates`, then `memory_items`
        (`a` is the correction's strength, 1 unless set)."""
        columns = candidates if memory_items is None else torch.cat([candidates, memory_items])
        if self.full_softmax:
            return torch.zeros(columns.shape, dtype=torch.float32, device=columns.device)
        return self.correction * sampling_log_weights(
            columns,
            self.probability.to(columns.device),
            batch_slots,
            memory_items,
            self.sampled,
            self.sampled_probability.to(columns.device),
        )
