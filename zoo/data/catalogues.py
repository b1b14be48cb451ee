"""One data set over several catalogues, for models trained on all of them at once.

The catalogues' items and users are laid end to end: catalogue c's item i is combined item
`first_item + i`, its user u combined user `first_user + u`. Item and user ids stay per
catalogue (the same id in two catalogues names two items), so the combined ids carry the
catalogue's label (`label/id`). Everything that ranks or samples negatives keeps to one
catalogue at a time through `catalogue_parts`; each part keeps its catalogue as read, so
per-catalogue work (features, evaluation) runs on the catalogue itself.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from crossan.zoo.core.errors import ConfigError
from crossan.zoo.data.dataset import PAD, SequenceDataset

__all__ = ["CataloguePart", "catalogue_parts", "combine_catalogues", "catalogue_of_users"]


@dataclass(frozen=True)
class CataloguePart:
    """One catalogue of a combined data set: its label, the catalogue as read, and where its
    items and users start in the combined indices."""

    label: str
    dataset: SequenceDataset
    first_item: int
    first_user: int

    @property
    def num_items(self) -> int:
        return self.dataset.num_items

    @property
    def num_users(self) -> int:
        return self.dataset.num_users

    @property
    def item_rows(self) -> slice:
        """The catalogue's rows of the combined item features (row = item index - 1)."""
        return slice(self.first_item, self.first_item + self.num_items)

    def local_users(self, users: np.ndarray) -> np.ndarray:
        """The catalogue's users among combined user indices `users` (sorted), as its own indices."""
        users = np.asarray(users, dtype=np.int64)
        mine = users[(users >= self.first_user) & (users < self.first_user + self.num_users)]
        return mine - self.first_user

    def combined_windows(self, windows: np.ndarray) -> np.ndarray:
        """Windows of the catalogue's own item indices as combined indices (padding stays `PAD`)."""
        return np.where(windows != PAD, windows + self.first_item, PAD)


def catalogue_parts(dataset: SequenceDataset) -> tuple[CataloguePart, ...]:
    """The catalogues of `dataset`: its parts when combined, else itself as the one part."""
    return dataset.parts or (CataloguePart(dataset.name, dataset, 0, 0),)


def catalogue_of_users(dataset: SequenceDataset) -> np.ndarray:
    """Per combined user, the index of its catalogue in `catalogue_parts` `[num_users]`."""
    return np.repeat(np.arange(len(catalogue_parts(dataset))), [part.num_users for part in catalogue_parts(dataset)])


def _labels(datasets: Sequence[SequenceDataset]) -> list[str]:
    """A label per catalogue: its name, numbered (`name-1`, `name-2`) where names repeat."""
    repeated = {name for name, count in Counter(d.name for d in datasets).items() if count > 1}
    seen: Counter[str] = Counter()
    labels = []
    for dataset in datasets:
        seen[dataset.name] += 1
        labels.append(f"{dataset.name}-{seen[dataset.name]}" if dataset.name in repeated else dataset.name)
    return labels


def _concatenated(values: list[list | None], what: str, labels: list[str]) -> list | None:
    """The catalogues' lists end to end; None when none has one; one line when only some do
    (a model reads the same content of every item)."""
    present = [value is not None for value in values]
    if not any(present):
        return None
    if not all(present):
        lacking = ", ".join(label for label, has in zip(labels, present, strict=True) if not has)
        raise ConfigError(f"catalogues trained together need the same content: {lacking} has no {what}")
    return [entry for value in values for entry in value or ()]


def combine_catalogues(datasets: Sequence[SequenceDataset]) -> SequenceDataset:
    """One data set over `datasets`' catalogues, each kept apart (`CataloguePart`); a single
    data set is returned as it is."""
    if len(datasets) == 1:
        return datasets[0]
    if not datasets:
        raise ConfigError("no catalogue to combine")
    fingerprints = Counter(dataset.fingerprint() for dataset in datasets)
    twice = [d.root for d in datasets if fingerprints[d.fingerprint()] > 1]
    if twice:
        raise ConfigError(f"the same catalogue is given twice ({twice[0]}); give each catalogue once")
    labels = _labels(datasets)
    item_starts = np.cumsum([0, *(d.num_items for d in datasets)])
    user_starts = np.cumsum([0, *(d.num_users for d in datasets)])
    interaction_starts = np.cumsum([0, *(d.num_interactions for d in datasets)])
    parts = tuple(
        CataloguePart(label, dataset, int(item_start), int(user_start))
        for label, dataset, item_start, user_start in zip(labels, datasets, item_starts, user_starts, strict=False)
    )
    return SequenceDataset(
        name="+".join(labels),
        root=datasets[0].root,
        item_ids=[f"{label}/{item}" for label, d in zip(labels, datasets, strict=True) for item in d.item_ids],
        user_ids=[f"{label}/{user}" for label, d in zip(labels, datasets, strict=True) for user in d.user_ids],
        items=np.concatenate(
            [d.items.astype(np.int64) + start for d, start in zip(datasets, item_starts, strict=False)]
        ),
        offsets=np.concatenate(
            [[0], *(d.offsets[1:] + start for d, start in zip(datasets, interaction_starts, strict=False))]
        ),
        titles=_concatenated([d.titles for d in datasets], "titles", labels),
        cover_paths=_concatenated([d.cover_paths for d in datasets], "covers", labels),
        video_paths=_concatenated([d.video_paths for d in datasets], "videos", labels),
        dropped_users=sum(d.dropped_users for d in datasets),
        parts=parts,
    )
