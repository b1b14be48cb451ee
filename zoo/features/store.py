"""Item inputs of a model: cached backbone states per modality, stored backbone inputs (token ids,
pixels) for the uncached models, or item rows for ID models."""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["ItemFeatures"]


class ItemFeatures:
    """Gathers what `model.encode_items` takes for a set of catalogue rows.

    `states` maps a name to one tensor `[N, ...]` per model input, in input order: the `[N, S, W]`
    states of a modality, normally the memory-mapped float16 cache (`crossan.zoo.features.states.open_states`), or
    stored backbone inputs (token ids, pixels). They are kept as given, so only the pages of
    gathered rows are ever read and the cache never has to fit in (device) memory; each gathered
    batch goes to `device`, floating-point tensors as float32. With `with_rows` the gathered rows
    themselves come last (a model with an ID term, `config.reads_item_rows`); an empty mapping
    means the model embeds item ids (`sasrec-id`), so rows are returned unless `with_rows` is
    False.
    """

    def __init__(
        self,
        num_items: int,
        states: dict[str, torch.Tensor] | None = None,
        device: torch.device | str = "cpu",
        with_rows: bool | None = None,
    ) -> None:
        self.num_items = num_items
        self.with_rows = not states if with_rows is None else with_rows
        self.device = torch.device(device)
        self.modalities = tuple(states or {})
        for name, tensor in (states or {}).items():
            if tensor.dim() < 2 or tensor.shape[0] != num_items:
                raise ValueError(f"{name} features must be [{num_items}, ...], got {list(tensor.shape)}")
        self._states = tuple((states or {}).values())

    @classmethod
    def concatenated(cls, parts: Sequence[ItemFeatures]) -> ItemFeatures:
        """Several catalogues' features end to end, in the order of `parts` (which share their
        inputs, device and rows setting). The result is in memory: each part is read once."""
        first = parts[0]
        states = {name: torch.cat([part._states[i] for part in parts]) for i, name in enumerate(first.modalities)}
        return cls(sum(part.num_items for part in parts), states, first.device, first.with_rows)

    def rows(self, rows: slice) -> ItemFeatures:
        """The features of catalogue `rows` only (one catalogue of several), as views."""
        return ItemFeatures(
            len(range(self.num_items)[rows]),
            {name: tensor[rows] for name, tensor in zip(self.modalities, self._states, strict=True)},
            self.device,
            self.with_rows,
        )

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Each input's shape after the item axis (for states: `(num_states, width)`)."""
        return {m: tuple(t.shape[1:]) for m, t in zip(self.modalities, self._states, strict=True)}

    def with_item_rows(self, with_rows: bool) -> ItemFeatures:
        """The same tensors, gathered with or without the rows appended (for another model config)."""
        return ItemFeatures(
            self.num_items, dict(zip(self.modalities, self._states, strict=True)), self.device, with_rows
        )

    def gather(self, rows: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Model inputs for catalogue `rows [U]` (0-based): `[U, ...]` per input on `device`
        (floating point as float32), then the rows themselves when `with_rows`."""
        # The batch crosses to the device in its stored precision (half the bytes of float32)
        # and is converted there.
        gathered = (t[rows.to(t.device)].to(self.device) for t in self._states)
        inputs = tuple(t.to(torch.float32) if t.is_floating_point() else t for t in gathered)
        return (*inputs, rows.to(self.device)) if self.with_rows else inputs
