"""Item inputs of a model: cached backbone states per modality, or item rows for ID models."""
from __future__ import annotations

import torch

__all__ = ["ItemFeatures"]


class ItemFeatures:
    """Gathers what `model.encode_items` takes for a set of catalogue rows.

    `states` maps modality -> `[N, S, W]` states, normally the memory-mapped float16 cache
    (`zoo.cache.open_states`). They are kept as given, so only the pages of gathered rows are
    ever read and the cache never has to fit in (device) memory; each gathered batch is
    converted to float32 on `device`. An empty mapping means the model embeds item ids
    (`sasrec-id`): rows are returned as they are.
    """

    def __init__(self, num_items: int, states: dict[str, torch.Tensor] | None = None,
                 device: torch.device | str = "cpu") -> None:
        self.num_items = num_items
        self.device = torch.device(device)
        self.modalities = tuple(states or {})
        for modality, tensor in (states or {}).items():
            if tensor.dim() != 3 or tensor.shape[0] != num_items:
                raise ValueError(f"{modality} states must be [{num_items}, S, W], got {list(tensor.shape)}")
        self._states = tuple((states or {}).values())

    def shapes(self) -> dict[str, tuple[int, int]]:
        """`(num_states, width)` of each modality."""
        return {m: (t.shape[1], t.shape[2]) for m, t in zip(self.modalities, self._states)}

    def gather(self, rows: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Model inputs for catalogue `rows [U]` (0-based): `[U, S, W]` float32 per modality on
        `device`, or the rows themselves for an ID model."""
        if not self._states:
            return (rows.to(self.device),)
        # The batch crosses to the device in its stored precision (half the bytes of float32)
        # and is converted there.
        return tuple(t[rows.to(t.device)].to(self.device).to(torch.float32) for t in self._states)
