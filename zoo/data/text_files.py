"""Strict parsers for the text files of both layouts: every failure names file and line.

Headers. A header line is one whose first two fields name the file's first two columns (`item`,
`item_id`, `user_id:token`, ...); it is never read as an item or a user. The CSV files (MicroLens
titles and pairs) may start with one, which is skipped; the TSV files (`users.tsv`, `items.tsv`,
`<name>_pairs.tsv`) have none, and one there is an error. Item files are searched for one on
every line (below the first it would pass for an item); in an interaction file a header below
the first line fails anyway, on its column names read as item ids or a timestamp.

Every file must end with a line end: a last line without one is what a copy cut short leaves,
and its last item id or timestamp may be cut too.
"""

from __future__ import annotations

import csv
import math
from array import array
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from crossan.zoo.data.dataset import MIN_INTERACTIONS
from crossan.zoo.data.errors import DataError

__all__ = [
    "iter_lines",
    "read_item_titles_csv",
    "read_item_titles_tsv",
    "read_user_sequences_tsv",
    "read_user_sequences_csv",
    "UserSequences",
]

USER_COLUMNS = frozenset({"user", "users", "user_id", "userid", "uid", "reviewer_id", "reviewerid"})
ITEM_COLUMNS = frozenset({"item", "item_id", "itemid", "iid", "asin", "parent_asin"})
SEQUENCE_COLUMNS = ITEM_COLUMNS | {"items", "item_ids", "item_id_list", "item_list", "sequence", "history"}
TITLE_COLUMNS = frozenset({"title", "titles", "item_title", "title_en", "name"})


def _column_name(cell: str) -> str:
    """`cell` as a header names a column: lower case, without a RecBole type (`item_id:token`)."""
    return cell.strip().lower().partition(":")[0]


def _is_header(cells: list[str], first: frozenset[str], second: frozenset[str]) -> bool:
    """Whether the first two fields of a line name the file's first two columns (a header, not data)."""
    return len(cells) >= 2 and _column_name(cells[0]) in first and _column_name(cells[1]) in second


def _raise_decode_error(path: Path) -> None:
    """The `DataError` of a file that is not UTF-8, naming the first bad byte and its line (the
    whole file is read: text decoding fails a chunk at a time, before the chunk's lines)."""
    raw = path.read_bytes()
    try:
        raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise DataError(f"not valid UTF-8 (byte {error.start})", path, line) from None


def iter_lines(path: Path) -> Iterator[tuple[int, str]]:
    """`(line number, text with its line end)` of each line, read lazily (a file of 10^7
    interactions is never held whole). A missing, non-UTF-8, empty or truncated file (a last
    line without a line end) is a `DataError`."""
    if not path.is_file():
        raise DataError("file not found" if not path.exists() else "not a regular file", path)
    empty, number, text = True, 0, ""
    try:
        with path.open(encoding="utf-8-sig", newline=None) as handle:
            for number, text in enumerate(handle, start=1):
                empty = empty and not text.strip()
                yield number, text
    except UnicodeDecodeError:
        _raise_decode_error(path)
        raise
    if empty:
        raise DataError("file is empty", path)
    if text.strip() and not text.endswith("\n"):
        raise DataError(
            "the file ends inside this line, without a line end: a truncated copy? (add a line end if "
            "the line is whole)",
            path,
            number,
        )


def _csv_rows(
    path: Path, first: frozenset[str], second: frozenset[str], every_row: bool
) -> Iterator[tuple[int, list[str]]]:
    """`(line number, fields)` of each non-blank CSV row, past an optional header line (one that
    names the columns `first` and `second`); an unclosed quote or any other CSV fault is a
    `DataError`, and so is a header below the first row when `every_row` asks to look for one
    (an item file, where it would pass for an item; in an interaction file its item id fails)."""
    reader = csv.reader((text for _, text in iter_lines(path)), strict=True)
    first_row = True
    try:
        for row in reader:
            if not row or all(not cell.strip() for cell in row):
                continue
            if (first_row or every_row) and _is_header(row, first, second):
                if not first_row:
                    raise DataError(f"a header line below the first line ({','.join(row)!r})", path, reader.line_num)
                first_row = False
                continue
            first_row = False
            yield reader.line_num, row
    except csv.Error as error:
        raise DataError(f"not valid CSV ({error})", path, reader.line_num) from None


def _tsv_fields(path: Path, line: int, text: str, layout: str) -> tuple[str, str]:
    """The two tab-separated fields of a line of a `layout` file (`item<TAB>title`, ...), the
    second with the line end (which the callers strip)."""
    fields = text.split("\t")
    if len(fields) != 2:
        raise DataError(f"expected {layout!r}, got {len(fields)} tab-separated field(s)", path, line)
    return fields[0], fields[1]


def _reject_tsv_header(
    path: Path, line: int, cells: list[str], first: frozenset[str], second: frozenset[str], layout: str
) -> None:
    """Stop at a header line in a TSV file, whose `layout` has none."""
    if _is_header(cells, first, second):
        raise DataError(
            f"a header line ({'<TAB>'.join(cells)!r}); this file has none, every line is {layout!r}: delete the line",
            path,
            line,
        )


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
    for line, row in _csv_rows(path, ITEM_COLUMNS, TITLE_COLUMNS, every_row=True):
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
    """`item<TAB>title` lines (no header)."""
    items: list[str] = []
    titles: list[str] = []
    seen: set[str] = set()
    for line, text in iter_lines(path):
        if not text.strip():
            continue
        item, title = (field.strip() for field in _tsv_fields(path, line, text, "item<TAB>title"))
        _reject_tsv_header(path, line, [item, title], ITEM_COLUMNS, TITLE_COLUMNS, "item<TAB>title")
        _check_unique(item, seen, path, line)
        items.append(item)
        titles.append(title)
    return items, titles


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
    """`user<TAB>item item ...` lines (no header) -> flat sequences (`UserSequences`).

    Items are mapped through `item_index` (id -> 1-based index); an unknown id is an error.
    """
    layout = "user<TAB>item item ..."
    sequences = FlatSequences()
    seen: set[str] = set()
    for line, text in iter_lines(path):
        if not text.strip():
            continue
        user, items = _tsv_fields(path, line, text, layout)
        user, ids = user.strip(), items.split()
        if not user:
            raise DataError(f"expected {layout!r}, got an empty user id", path, line)
        if not seen:  # the first line only: a header further down fails on its item ids
            _reject_tsv_header(path, line, [user, *ids[:1]], USER_COLUMNS, SEQUENCE_COLUMNS, layout)
        if user in seen:
            raise DataError(f"user {user!r} appears twice", path, line)
        seen.add(user)
        if not ids:
            raise DataError(f"user {user!r} has no items", path, line)
        try:
            indices = [item_index[i] for i in ids]
        except KeyError as unknown:
            raise DataError(f"unknown item id {unknown.args[0]!r} (not in the item file)", path, line) from None
        sequences.add(user, indices)
    return sequences.finish(path)


def _timestamp(stamp: str, path: Path, line: int) -> float:
    """A finite number: `nan` would sort after every time and make its item the test target."""
    try:
        time = float(stamp)
    except ValueError:
        raise DataError(f"timestamp {stamp!r} is not a number", path, line) from None
    if not math.isfinite(time):
        raise DataError(f"timestamp {stamp!r} is not a finite number", path, line)
    return time


def read_user_sequences_csv(path: Path, item_index: dict[str, int]) -> UserSequences:
    """`user,item,timestamp` rows (header optional) -> per-user sequences in timestamp order.

    Users keep their order of first appearance; equal timestamps keep file order.
    """
    user_index: dict[str, int] = {}
    users, items, stamps = array("q"), array("i"), array("d")
    for line, row in _csv_rows(path, USER_COLUMNS, ITEM_COLUMNS, every_row=False):
        if len(row) != 3:
            raise DataError(f"expected 'user,item,timestamp', got {len(row)} field(s)", path, line)
        user, item, stamp = (cell.strip() for cell in row)
        if not user:
            raise DataError("empty user id", path, line)
        if item not in item_index:
            raise DataError(f"unknown item id {item!r} (not in the item file)", path, line)
        stamps.append(_timestamp(stamp, path, line))
        users.append(user_index.setdefault(user, len(user_index)))
        items.append(item_index[item])
    if not user_index:
        raise DataError("no interactions", path)
    user_column = np.frombuffer(users, dtype=np.int64)
    # Stable sort by user (in order of first appearance), then timestamp; file order breaks ties.
    order = np.lexsort((np.frombuffer(stamps, dtype=np.float64), user_column))
    ordered_items = np.frombuffer(items, dtype=np.int32)[order]
    bounds = np.concatenate([[0], np.cumsum(np.bincount(user_column, minlength=len(user_index)))])
    sequences = FlatSequences()
    for user, start, end in zip(user_index, bounds[:-1], bounds[1:], strict=True):
        sequences.add(user, ordered_items[start:end].tolist())
    return sequences.finish(path)
