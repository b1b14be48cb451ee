"""Data-parallel training over processes started by `torchrun`, and the collectives it needs.

`Processes` is the group a piece of work runs in: rank, world size, and the few collectives the
trainer, the evaluator and the feature cache use (row gathers with and without gradients, sums,
barriers). In a single process (`SINGLE`, or a plain `python train.py`) every collective is the
identity, so the same code path serves both. The engine underneath is `torch.distributed`
(gloo on the CPU, NCCL on CUDA) and `DistributedDataParallel` for gradients.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from crossan.zoo.core.errors import ConfigError

__all__ = ["Processes", "SINGLE", "launched"]

# Ranks wait at barriers while another rank extracts its share of a feature cache or writes a
# checkpoint; both can take far longer than torch's default half hour on a large catalogue.
COLLECTIVE_TIMEOUT = datetime.timedelta(hours=6)


@dataclass(frozen=True)
class Processes:
    """This process's place in the group of training processes (rank 0 of 1 when alone)."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        """Only the main process writes files and shows progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def shard(self, count: int, rank: int | None = None) -> range:
        """The contiguous share of `count` rows of this process (or of `rank`): shares differ by
        at most one row, the larger ones first, and cover the rows in rank order."""
        rank = self.rank if rank is None else rank
        base, extra = divmod(count, self.world_size)
        start = rank * base + min(rank, extra)
        return range(start, start + base + (rank < extra))

    def gather_counts(self, count: int) -> list[int]:
        """Every rank's `count`, in rank order."""
        if not self.distributed:
            return [count]
        return self._all_gather(torch.tensor([count], device=self.device)).tolist()

    def gather_rows(self, tensor: torch.Tensor, counts: list[int] | None = None) -> torch.Tensor:
        """Every rank's `tensor` (any number of rows, same trailing shape and dtype), concatenated
        in rank order, on every rank; `counts` are the ranks' row counts when already known
        (`gather_counts`). No gradient flows back."""
        if not self.distributed:
            return tensor
        counts = counts or self.gather_counts(tensor.shape[0])
        most = max(counts)
        sent = tensor.detach().to(self.device)
        padded = torch.zeros((most, *sent.shape[1:]), dtype=sent.dtype, device=self.device)
        padded[: sent.shape[0]] = sent
        gathered = self._all_gather(padded).view(self.world_size, most, *sent.shape[1:])
        return torch.cat([gathered[r, : counts[r]] for r in range(self.world_size)]).to(tensor.device)

    def gather_rows_with_grad(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every rank's `tensor` (the same shape on every rank), concatenated in rank order.

        Gradients flow back: the backward pass sums, over all ranks, the gradient of each rank's
        loss with respect to this rank's rows, so a loss over the gathered rows trains what
        produced them on every rank.
        """
        if not self.distributed:
            return tensor
        # torch deprecated torch.distributed.nn.functional.all_gather in favour of these
        # functional collectives, whose all-gather carries its gradient (a reduce-scatter).
        from torch.distributed._functional_collectives import all_gather_single_autograd

        world = dist.group.WORLD
        if world is None:
            raise RuntimeError("all_gather needs the default process group (none is initialised)")
        return all_gather_single_autograd(tensor.contiguous(), 0, world)

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The elementwise sum of `tensor` over ranks (a new tensor; no gradient)."""
        if not self.distributed:
            return tensor.detach().clone()
        total = tensor.detach().to(self.device).clone()
        dist.all_reduce(total)
        return total.to(tensor.device)

    def any(self, flag: bool) -> bool:
        """Whether `flag` holds on any rank (every rank gets the same answer)."""
        return bool(self.sum(torch.tensor([int(flag)], device=self.device)).item())

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def broadcast_text(self, text: str) -> str:
        """The main process's `text` on every rank (e.g. a run folder named after the clock)."""
        if not self.distributed:
            return text
        encoded = torch.tensor(list(text.encode()), dtype=torch.uint8, device=self.device)
        length = torch.tensor([encoded.numel()], device=self.device)
        dist.broadcast(length, src=0)
        received = encoded if self.is_main else torch.empty(int(length), dtype=torch.uint8, device=self.device)
        dist.broadcast(received, src=0)
        return bytes(received.cpu().tolist()).decode()

    def wrap(self, module: nn.Module) -> nn.Module:
        """`module` under DistributedDataParallel (gradients averaged over ranks in backward),
        or `module` itself in a single process."""
        if not self.distributed:
            return module
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=device_ids)

    def _all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        out = torch.empty(
            (self.world_size * tensor.shape[0], *tensor.shape[1:]), dtype=tensor.dtype, device=self.device
        )
        dist.all_gather_single(out, tensor.contiguous())
        return out


SINGLE = Processes()


@contextlib.contextmanager
def launched(device: torch.device) -> Iterator[tuple[Processes, torch.device]]:
    """The process group `torchrun` started this process in (gloo on the CPU, NCCL on CUDA, one
    GPU per local rank) and this rank's device; a plain single process outside torchrun.

    The group is torn down on the way out, also after an error.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        yield SINGLE, device
        return
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"local rank {local_rank} has no GPU ({torch.cuda.device_count()} visible): "
                "start at most one process per GPU"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=COLLECTIVE_TIMEOUT)
    try:
        yield Processes(rank, world_size, device), device
    finally:
        dist.destroy_process_group()
