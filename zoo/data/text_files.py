"""Strict parsers for the text files of both layouts: every failure names file and line."""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from crossan.zoo.data.dataset import MIN_INTERACTIONS
from crossan.zoo.data.errors import DataError

__all__ = ["read_text", "read_item_titles_csv", "read_item_titles_tsv", "read_user_sequences_tsv",
           "read_user_sequences_csv"]


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
    for line, text in enumerate(read_text(path).splitlines(), start=1):
        if not text.strip():
            continue
        item, tab, title = text.partition("\t")
        if not tab:
            raise DataError("expected 'item<TAB>title'", path, line)
        _check_unique(item.strip(), seen, path, line)
        items.append(item.strip())
        titles.append(title.strip())
    return items, titles


def _keep_long_enough(users: list[tuple[str, list[str]]], item_index: dict[str, int], path: Path
                      ) -> tuple[list[str], list[np.ndarray], int]:
    """Map item ids to indices and drop users with fewer than `MIN_INTERACTIONS` items."""
    kept = [(user, items) for user, items in users if len(items) >= MIN_INTERACTIONS]
    if not kept:
        raise DataError(f"no user has {MIN_INTERACTIONS} or more interactions", path)
    sequences = [np.array([item_index[i] for i in items], dtype=np.int64) for _, items in kept]
    return [user for user, _ in kept], sequences, len(users) - len(kept)


def read_user_sequences_tsv(path: Path, item_index: dict[str, int]) -> tuple[list[str], list[np.ndarray], int]:
    """`user<TAB>item item ...` lines -> (user ids, index sequences, users dropped as too short).

    Items are mapped through `item_index` (id -> 1-based index); an unknown id is an error.
    """
    users: list[tuple[str, list[str]]] = []
    seen: set[str] = set()
    for line, text in enumerate(read_text(path).splitlines(), start=1):
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
        unknown = [i for i in ids if i not in item_index]
        if unknown:
            raise DataError(f"unknown item id {unknown[0]!r} (not in the item file)", path, line)
        users.append((user, ids))
    return _keep_long_enough(users, item_index, path)


def read_user_sequences_csv(path: Path, item_index: dict[str, int]) -> tuple[list[str], list[np.ndarray], int]:
    """`user,item,timestamp` rows (header optional) -> per-user sequences in timestamp order.

    Users keep their order of first appearance; equal timestamps keep file order.
    """
    by_user: dict[str, list[tuple[float, str]]] = {}
    reader = csv.reader(io.StringIO(read_text(path), newline=""))
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
        by_user.setdefault(user, []).append((time, item))
    if not by_user:
        raise DataError("no interactions", path)
    users = [(user, [item for _, item in sorted(events, key=lambda e: e[0])]) for user, events in by_user.items()]
    return _keep_long_enough(users, item_index, path)
