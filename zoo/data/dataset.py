"""In-memory sequential-recommendation data set with the leave-one-out split."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from crossan.zoo.core.errors import ConfigError
from crossan.zoo.data.errors import DataError

if TYPE_CHECKING:
    from crossan.zoo.data.catalogues import CataloguePart

__all__ = ["SequenceDataset", "PAD", "MIN_INTERACTIONS"]

PAD = 0
"""Index of the padding item; real items are 1..num_items (cache row = index - 1)."""

MIN_INTERACTIONS = 3
"""Leave-one-out needs a training prefix, a validation item and a test item."""

ITEM_DTYPE = np.int32
"""Item indices fit 32 bits up to two billion items, half the memory of int64."""


def _items_after_history(split: str) -> int:
    """How many items of a sequence follow the history before the `split` target: the
    validation and test targets after the training prefix (`train` and `valid`), the test
    target after the test history."""
    if split in ("train", "valid"):
        return 2
    if split == "test":
        return 1
    raise ValueError(f"split must be train, valid or test, got {split!r}")


def _target_split(split: str) -> str:
    """`split`, checked to be one that has a target."""
    if split not in ("valid", "test"):
        raise ValueError(f"split must be valid or test, got {split!r}")
    return split


T = TypeVar("T")


@dataclass
class SequenceDataset:
    """Users' chronological item sequences over a catalogue, plus where item content lives.

    The sequences are stored flat: `items` holds every user's item indices (1..num_items) one
    user after another, and user u's sequence is `items[offsets[u]:offsets[u + 1]]`. Two arrays
    instead of one array object per user keep memory at the interactions' bytes and let
    per-user work run as whole-array operations (10^6 users cost what their items cost).
    Split per user: the last item is the test target, the second-to-last the validation
    target, the rest the training prefix.
    """

    name: str
    root: Path
    item_ids: list[str]
    user_ids: list[str]
    items: np.ndarray
    offsets: np.ndarray
    titles: list[str] | None = None
    cover_paths: list[Path] | None = None
    video_paths: list[Path] | None = None
    dropped_users: int = 0
    parts: tuple[CataloguePart, ...] = ()
    """The catalogues of a data set combined from several (`combine_catalogues`); empty for one."""
    _fingerprint: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.items = np.asarray(self.items, dtype=ITEM_DTYPE)
        self.offsets = np.asarray(self.offsets, dtype=np.int64)
        if (
            self.offsets.shape != (len(self.user_ids) + 1,)
            or self.offsets[0] != 0
            or self.offsets[-1] != len(self.items)
        ):
            raise ValueError(f"offsets must run from 0 to {len(self.items)} with one entry per user plus one")
        if (self.lengths < MIN_INTERACTIONS).any():
            raise ValueError(f"every user needs at least {MIN_INTERACTIONS} interactions")

    @classmethod
    def from_sequences(
        cls,
        name: str,
        root: Path,
        item_ids: list[str],
        user_ids: list[str],
        sequences: list[np.ndarray] | list[list[int]],
    ) -> SequenceDataset:
        """A data set from one item-index sequence per user (small sets and tests)."""
        lengths = np.array([len(s) for s in sequences], dtype=np.int64)
        items = (
            np.concatenate([np.asarray(s, dtype=ITEM_DTYPE) for s in sequences])
            if sequences
            else np.zeros(0, dtype=ITEM_DTYPE)
        )
        return cls(name, root, item_ids, user_ids, items, np.concatenate([[0], np.cumsum(lengths)]))

    def required_titles(self) -> list[str]:
        """The items' titles; one line (`DataError`) for a data set without them."""
        return _required(self.titles, "titles", self.name)

    def required_cover_paths(self) -> list[Path]:
        """The items' cover paths; one line (`DataError`) for a data set without covers."""
        return _required(self.cover_paths, "covers", self.name)

    def required_video_paths(self) -> list[Path]:
        """The items' video paths; one line (`DataError`) for a data set without videos."""
        return _required(self.video_paths, "videos", self.name)

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    @property
    def num_users(self) -> int:
        return len(self.user_ids)

    @property
    def num_interactions(self) -> int:
        return len(self.items)

    @property
    def lengths(self) -> np.ndarray:
        """Interactions per user `[num_users]`."""
        return np.diff(self.offsets)

    @property
    def modalities(self) -> tuple[str, ...]:
        """Modalities whose raw content this data set provides (audio = the video's soundtrack)."""
        available = []
        if self.titles is not None:
            available.append("text")
        if self.cover_paths is not None:
            available.append("image")
        if self.video_paths is not None:
            available += ["video", "audio"]
        return tuple(available)

    def require_modalities(self, modalities: tuple[str, ...]) -> None:
        """Raise a clear error when a model asks for content this data set lacks."""
        missing = [m for m in modalities if m not in self.modalities]
        if missing:
            raise ConfigError(
                f"data set {self.name!r} at {self.root} has no {', '.join(missing)} content "
                f"(it provides: {', '.join(self.modalities) or 'nothing'})"
            )

    def sequence(self, user: int) -> np.ndarray:
        """User `user`'s whole sequence (a view into `items`)."""
        return self.items[self.offsets[user] : self.offsets[user + 1]]

    def history_ends(self, split: str) -> np.ndarray:
        """Per user, the end (exclusive, into `items`) of the history before the `split` target
        (`train` = the training prefix, which validation also sees)."""
        return self.offsets[1:] - _items_after_history(split)

    def history(self, user: int, split: str) -> np.ndarray:
        """Items the user had before the `split` target (`train` = the training prefix)."""
        return self.items[self.offsets[user] : self.offsets[user + 1] - _items_after_history(split)]

    def targets(self, split: str) -> np.ndarray:
        """Every user's `split` target item `[num_users]`."""
        return self.items[self.offsets[1:] - _items_after_history(_target_split(split))].astype(np.int64)

    def target(self, user: int, split: str) -> int:
        return int(self.items[self.offsets[user + 1] - _items_after_history(_target_split(split))])

    def recent_histories(self, users: np.ndarray, split: str, length: int) -> np.ndarray:
        """The last `length` history items before each user's `split` target, left-padded with
        `PAD`: `[len(users), length]` int64, built without a per-user loop."""
        users = np.asarray(users, dtype=np.int64)
        return self.windows(self.offsets[users], self.history_ends(split)[users], length)

    def windows(self, starts: np.ndarray, ends: np.ndarray, length: int) -> np.ndarray:
        """`items[max(start, end - length):end]` for each pair, left-padded with `PAD` to
        `[len(ends), length]` int64 (`starts` bound each window to its user's sequence)."""
        positions = ends[:, None] - length + np.arange(length)
        outside = positions < starts[:, None]
        np.maximum(positions, 0, out=positions)  # in place: a window of 10^6 users is 88 MB
        windows = self.items[positions]
        del positions
        windows = windows.astype(np.int64)
        windows[outside] = PAD
        return windows

    def history_items(self, users: np.ndarray, split: str) -> tuple[np.ndarray, np.ndarray]:
        """Every history item before the `split` targets of `users`, flat: `(row, item)` pairs,
        `row` indexing `users`."""
        users = np.asarray(users, dtype=np.int64)
        starts, ends = self.offsets[users], self.history_ends(split)[users]
        lengths = ends - starts
        rows = np.repeat(np.arange(len(users)), lengths)
        first_of_row = np.repeat(np.cumsum(lengths) - lengths, lengths)
        positions = np.repeat(starts, lengths) + np.arange(int(lengths.sum())) - first_of_row
        return rows, self.items[positions].astype(np.int64)

    def train_counts(self) -> np.ndarray:
        """Occurrences of each item index (0..num_items) in the training prefixes: all
        occurrences less the validation and test targets (no per-position temporaries)."""
        counts = np.bincount(self.items, minlength=self.num_items + 1).astype(np.int64)
        for split in ("valid", "test"):
            counts -= np.bincount(self.targets(split), minlength=self.num_items + 1)
        return counts

    def fingerprint(self) -> str:
        """Hash of the catalogue and item content (ids, titles, media file names and sizes).

        Caches store it; a changed data set no longer matches and is rebuilt.
        """
        if self._fingerprint is None:
            digest = hashlib.sha256()
            digest.update("\n".join(self.item_ids).encode())
            if self.titles is not None:
                digest.update("\n".join(self.titles).encode())
            for paths in (self.cover_paths, self.video_paths):
                for path in paths or ():
                    size = path.stat().st_size if path.is_file() else -1
                    digest.update(f"{path.name}:{size}\n".encode())
            self._fingerprint = digest.hexdigest()[:16]
        return self._fingerprint

    def sequences_fingerprint(self) -> str:
        """Hash of every user's id and item sequence. `fingerprint` covers the catalogue only (what
        the feature cache depends on); two data sets with one catalogue and other users differ here."""
        digest = hashlib.sha256()
        digest.update("\n".join(self.user_ids).encode())
        digest.update(np.ascontiguousarray(self.offsets, dtype=np.int64).tobytes())
        digest.update(np.ascontiguousarray(self.items, dtype=ITEM_DTYPE).tobytes())
        return digest.hexdigest()[:16]

    def summary(self) -> str:
        if self.parts:
            return "\n".join(
                [f"{len(self.parts)} catalogues, trained together:", *(part.dataset.summary() for part in self.parts)]
            )
        lengths = self.lengths
        return (
            f"{self.name}: {self.num_users:,} users, {self.num_items:,} items, {int(lengths.sum()):,} "
            f"interactions (mean length {lengths.mean():.2f}); {self.dropped_users:,} users with fewer "
            f"than {MIN_INTERACTIONS} interactions dropped; modalities: {', '.join(self.modalities)}"
        )


def _required(values: list[T] | None, what: str, name: str) -> list[T]:
    if values is None:
        raise DataError(f"{name} has no {what}; a backbone that reads them needs a data set with them")
    return values
