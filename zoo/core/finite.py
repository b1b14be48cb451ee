"""Non-finite numbers are defects: a NaN score would rank as a hit, a NaN weight would score NaN.

Every place that turns tensors into a result (ranking, metrics, loading weights, opening the
feature cache) calls `require_finite`, which raises one `NonFiniteError` saying which tensor,
how many values, and where the first one is, instead of letting the number through.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping

import torch

from crossan.zoo.core.errors import NonFiniteError

__all__ = ["require_finite", "require_finite_tensors", "require_finite_rows"]

CHECK_CHUNK = 1 << 24
"""Values checked at a time, so a memory-mapped cache is not read into memory whole."""


def require_finite(tensor: torch.Tensor, what: str, name_row: Callable[[int], str] | None = None) -> None:
    """Raise `NonFiniteError` if `tensor` holds a NaN or an infinity; the message names `what`,
    the count, and the first bad entry (its row through `name_row`, e.g. a user id)."""
    if not tensor.is_floating_point():
        return
    finite = torch.isfinite(tensor)
    if bool(finite.all()):
        return
    bad = (~finite).nonzero()
    first = bad[0].tolist()
    where = f"at index {tuple(first)}" if len(first) != 1 else f"at index {first[0]}"
    if name_row is not None and tensor.dim() >= 1:
        rows = torch.unique(bad[:, 0])
        named = ", ".join(name_row(int(row)) for row in rows[:3]) + (", ..." if len(rows) > 3 else "")
        where = f"in {len(rows)} row(s): {named}"
        if tensor.dim() >= 2:
            where += f" (the first at index {tuple(first[1:]) if tensor.dim() > 2 else first[1]} of its row)"
    raise NonFiniteError(f"{what}: {len(bad)} non-finite value(s) (NaN or infinity) {where}")


def require_finite_tensors(tensors: Mapping[str, torch.Tensor], source: str) -> None:
    """`require_finite` on every tensor of a state dict (weights, optimizer state), named by key."""
    for key, tensor in tensors.items():
        require_finite(tensor, f"{source}: tensor {key!r}")


def require_finite_rows(tensor: torch.Tensor, what: str, rows: torch.Tensor | None = None) -> None:
    """`require_finite` over the first axis of a large (possibly memory-mapped) tensor, a chunk
    of rows at a time; `rows` (indices) checks only those rows, a cheap sample."""
    if not tensor.is_floating_point() or tensor.shape[0] == 0:
        return
    if rows is not None:
        require_finite(tensor[rows], what, lambda index: f"row {int(rows[index])}")
        return
    step = max(1, CHECK_CHUNK // max(1, tensor[0].numel()))
    for start in range(0, tensor.shape[0], step):
        require_finite(tensor[start : start + step], what, functools.partial(_row_name, start))


def _row_name(offset: int, index: int) -> str:
    """The name of row `index` of a chunk that starts at row `offset`."""
    return f"row {offset + index}"
