"""Item inputs of a model: cached backbone states per modality, or item rows for ID models."""
from __future__ import annotations

import torch

__all__ = ["ItemFeatures"]


class ItemFeatures:
    """Gathers what `model.encode_items` takes for a set of catalogue rows.

    `states` maps modality -> `[N, S, W]` states (memory-mapped float16 or in memory); an
    empty mapping means the model embeds item ids (`sasrec-id`), so rows are returned as is.
    States are moved to `device` once, as float32.
    """

    def __init__(self, num_items: int, states: dict[str, torch.Tensor] | None = None,
                 device: torch.device | str = "cpu") -> None:
        self.num_items = num_items
        self.device = torch.device(device)
        self.modalities = tuple(states or {})
        for modality, tensor in (states or {}).items():
            if tensor.shape[0] != num_items:
                raise ValueError(f"{modality} states have {tensor.shape[0]} rows for {num_items} items")
        self._states = [t.to(self.device, torch.float32) for t in (states or {}).values()]

    def shapes(self) -> dict[str, tuple[int, int]]:
        """`(num_states, width)` of each modality."""
        return {m: (t.shape[1], t.shape[2]) for m, t in zip(self.modalities, self._states)}

    def gather(self, rows: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Model inputs for catalogue `rows [U]` (0-based)."""
        if not self._states:
            return (rows.to(self.device),)
        index = rows.to(self.device)
        return tuple(t[index] for t in self._states)
