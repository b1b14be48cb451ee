"""Strict parsers for the text files of both layouts: every failure names file and line."""
from __future__ import annotations

import csv
import io
from array import array
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from crossan.zoo.data.dataset import MIN_INTERACTIONS
from crossan.zoo.data.errors import DataError

__all__ = ["read_text", "iter_lines", "read_item_titles_csv", "read_item_titles_tsv", "read_user_sequences_tsv",
           "read_user_sequences_csv", "UserSequences"]


def read_text(path: Path) -> str:
    """The whole file as UTF-8; missing, non-UTF-8 or empty files are a `DataError`."""
    if not path.is_file():
        raise DataError("file not found", path)
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise DataError(f"not valid UTF-8 (byte {error.start})", path, line) from None
    if not text.strip():
        raise DataError("file is empty", path)
    return text


def _check_unique(item: str, seen: set[str], path: Path, line: int) -> None:
    if not item:
        raise DataError("empty item id", path, line)
    if item in seen:
        raise DataError(f"duplicate item id {item!r}", path, line)
    seen.add(item)


def read_item_titles_csv(path: Path) -> tuple[list[str], list[str]]:
    """`item,title` rows (header optional; titles may be quoted and contain commas)."""
    items: list[str] = []
    titles: list[str] = []
    seen: set[str] = set()
    reader = csv.reader(io.StringIO(read_text(path), newline=""))
    for row in reader:
        line = reader.line_num
        if not row or all(not cell.strip() for cell in row):
            continue
        if line == 1 and [c.strip().lower() for c in row[:2]] == ["item", "title"]:
            continue
        if len(row) < 2:
            raise DataError(f"expected 'item,title', got {len(row)} field(s)", path, line)
        item, title = row[0].strip(), ",".join(row[1:]).strip()
        _check_unique(item, seen, path, line)
        items.append(item)
        titles.append(title)
    if not items:
        raise DataError("no items", path)
    return items, titles


def read_item_titles_tsv(path: Path) -> tuple[list[str], list[str]]:
    """`item<TAB>title` lines."""
    items: list[str] = []
    titles: list[str] = []
    seen: set[str] = set()
    for line, text in iter_lines(path):
        if not text.strip():
            continue
        item, tab, title = text.partition("\t")
        if not tab:
            raise DataError("expected 'item<TAB>title'", path, line)
        _check_unique(item.strip(), seen, path, line)
        items.append(item.strip())
        titles.append(title.strip())
    return items, titles


def iter_lines(path: Path) -> Iterator[tuple[int, str]]:
    """`(line number, text)` of each line, read lazily (a file of 10^7 interactions is never
    held whole); a missing, non-UTF-8 or empty file is a `DataError`, as in `read_text`."""
    if not path.is_file():
        raise DataError("file not found", path)
    empty = True
    try:
        with path.open(encoding="utf-8-sig", newline=None) as handle:
            for number, text in enumerate(handle, start=1):
                empty = empty and not text.strip()
                yield number, text.rstrip("\n")
    except UnicodeDecodeError:
        read_text(path)  # raises the error that names the byte and line
        raise
    if empty:
        raise DataError("file is empty", path)


class FlatSequences:
    """Users' item-index sequences appended one after another into one flat array (the
    layout `SequenceDataset` keeps), dropping users with fewer than `MIN_INTERACTIONS` items."""

    def __init__(self) -> None:
        self.user_ids: list[str] = []
        self.items = array("i")
        self.lengths = array("q")
        self.dropped = 0

    def add(self, user: str, indices: list[int]) -> None:
        if len(indices) < MIN_INTERACTIONS:
            self.dropped += 1
            return
        self.user_ids.append(user)
        self.items.extend(indices)
        self.lengths.append(len(indices))

    def finish(self, path: Path) -> tuple[list[str], np.ndarray, np.ndarray, int]:
        """(user ids, flat items, offsets, users dropped as too short)."""
        if not self.user_ids:
            raise DataError(f"no user has {MIN_INTERACTIONS} or more interactions", path)
        offsets = np.zeros(len(self.lengths) + 1, dtype=np.int64)
        np.cumsum(np.frombuffer(self.lengths, dtype=np.int64), out=offsets[1:])
        # A view of the array's buffer, not a copy: the items are held once.
        return self.user_ids, np.frombuffer(self.items, dtype=np.int32), offsets, self.dropped


UserSequences = tuple[list[str], np.ndarray, np.ndarray, int]
"""(user ids, flat item indices, per-user offsets, users dropped as too short)."""


def read_user_sequences_tsv(path: Path, item_index: dict[str, int]) -> UserSequences:
    """`user<TAB>item item ...` lines -> flat sequences (`UserSequences`).

    Items are mapped through `item_index` (id -> 1-based index); an unknown id is an error.
    """
    sequences = FlatSequences()
    seen: set[str] = set()
    for line, text in iter_lines(path):
        if not text.strip():
            continue
        user, tab, items = text.partition("\t")
        user = user.strip()
        if not tab or not user:
            raise DataError("expected 'user<TAB>item item ...'", path, line)
        if user in seen:
            raise DataError(f"user {user!r} appears twice", path, line)
        seen.add(user)
        ids = items.split()
        if not ids:
            raise DataError(f"user {user!r} has no items", path, line)
        try:
            indices = [item_index[i] for i in ids]
        except KeyError as unknown:
            raise DataError(f"unknown item id {unknown.args[0]!r} (not in the item file)", path, line) from None
        sequences.add(user, indices)
    return sequences.finish(path)


def read_user_sequences_csv(path: Path, item_index: dict[str, int]) -> UserSequences:
    """`user,item,timestamp` rows (header optional) -> per-user sequences in timestamp order.

    Users keep their order of first appearance; equal timestamps keep file order.
    """
    user_index: dict[str, int] = {}
    users, items, stamps = array("q"), array("i"), array("d")
    reader = csv.reader(text for _, text in iter_lines(path))
    for row in reader:
        line = reader.line_num
        if not row or all(not cell.strip() for cell in row):
            continue
        if line == 1 and [c.strip().lower() for c in row[:2]] == ["user", "item"]:
            continue
        if len(row) != 3:
            raise DataError(f"expected 'user,item,timestamp', got {len(row)} field(s)", path, line)
        user, item, stamp = (cell.strip() for cell in row)
        if not user:
            raise DataError("empty user id", path, line)
        if item not in item_index:
            raise DataError(f"unknown item id {item!r} (not in the item file)", path, line)
        try:
            time = float(stamp)
        except ValueError:
            raise DataError(f"timestamp {stamp!r} is not a number", path, line) from None
        users.append(user_index.setdefault(user, len(user_index)))
        items.append(item_index[item])
        stamps.append(time)
    if not user_index:
        raise DataError("no interactions", path)
    user_column = np.frombuffer(users, dtype=np.int64)
    # Stable sort by user (in order of first appearance), then timestamp; file order breaks ties.
    order = np.lexsort((np.frombuffer(stamps, dtype=np.float64), user_column))
    ordered_items = np.frombuffer(items, dtype=np.int32)[order]
    bounds = np.concatenate([[0], np.cumsum(np.bincount(user_column, minlength=len(user_index)))])
    sequences = FlatSequences()
    for user, start, end in zip(user_index, bounds[:-1], bounds[1:]):
        sequences.add(user, ordered_items[start:end].tolist())
    return sequences.finish(path)
