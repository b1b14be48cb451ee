"""In-memory sequential-recommendation data set with the leave-one-out split."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from crossan.zoo.errors import ConfigError

__all__ = ["SequenceDataset", "PAD", "MIN_INTERACTIONS"]

PAD = 0
"""Index of the padding item; real items are 1..num_items (cache row = index - 1)."""

MIN_INTERACTIONS = 3
"""Leave-one-out needs a training prefix, a validation item and a test item."""


@dataclass
class SequenceDataset:
    """Users' chronological item sequences over a catalogue, plus where item content lives.

    `sequences[u]` holds item indices in 1..num_items. Split per user: the last item is the
    test target, the second-to-last the validation target, the rest the training prefix.
    """

    name: str
    root: Path
    item_ids: list[str]
    user_ids: list[str]
    sequences: list[np.ndarray]
    titles: list[str] | None = None
    cover_paths: list[Path] | None = None
    video_paths: list[Path] | None = None
    dropped_users: int = 0
    _fingerprint: str | None = field(default=None, repr=False)

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    @property
    def num_users(self) -> int:
        return len(self.user_ids)

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
            raise ConfigError(f"data set {self.name!r} at {self.root} has no {', '.join(missing)} content "
                              f"(it provides: {', '.join(self.modalities) or 'nothing'})")

    def history(self, user: int, split: str) -> np.ndarray:
        """Items the user had before the `split` target (`train` = the training prefix)."""
        seq = self.sequences[user]
        if split in ("train", "valid"):
            return seq[:-2]
        if split == "test":
            return seq[:-1]
        raise ValueError(f"split must be train, valid or test, got {split!r}")

    def target(self, user: int, split: str) -> int:
        if split == "valid":
            return int(self.sequences[user][-2])
        if split == "test":
            return int(self.sequences[user][-1])
        raise ValueError(f"split must be valid or test, got {split!r}")

    def train_counts(self) -> np.ndarray:
        """Occurrences of each item index (0..num_items) in the training prefixes."""
        counts = np.zeros(self.num_items + 1, dtype=np.int64)
        for user in range(self.num_users):
            np.add.at(counts, self.history(user, "train"), 1)
        counts[PAD] = 0
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

    def summary(self) -> str:
        lengths = np.array([len(s) for s in self.sequences])
        return (f"{self.name}: {self.num_users:,} users, {self.num_items:,} items, {int(lengths.sum()):,} "
                f"interactions (mean length {lengths.mean():.2f}); {self.dropped_users:,} users with fewer "
                f"than {MIN_INTERACTIONS} interactions dropped; modalities: {', '.join(self.modalities)}")
