"""Readers for the supported data layouts, all returning a `SequenceDataset`.

- MicroLens: `<name>_pairs.tsv` (user TAB items) or `<name>_pairs.csv` (user,item,timestamp),
  `<name>_title_en.csv` or
  `<name>_titles.csv` (item,title), covers `<cover_dir>/<item>.jpg`, videos
  `<video_dir>/<item>.mp4` (the audio modality is the video's soundtrack).
- Amazon (the IISAN data sets): `users.tsv` (user TAB items) and `items.tsv` (item TAB title).
  Amazon titles come HTML-escaped (`&amp;`, `&quot;`); the reader decodes them, so a text
  backbone sees the characters rather than entity names that use up its token budget.
"""

from __future__ import annotations

import html
from pathlib import Path

from crossan.zoo.data.dataset import SequenceDataset
from crossan.zoo.data.errors import DataError
from crossan.zoo.data.text_files import (
    read_item_titles_csv,
    read_item_titles_tsv,
    read_user_sequences_csv,
    read_user_sequences_tsv,
)

__all__ = ["read_microlens", "read_amazon", "microlens_name"]


def _require_dir(root: Path) -> None:
    if not root.is_dir():
        raise DataError("data folder not found", root)


PAIR_SUFFIXES = ("_pairs.tsv", "_pairs.csv")


def microlens_name(root: Path) -> str:
    """The `<name>` prefix of the single `<name>_pairs.tsv` or `<name>_pairs.csv` in `root`."""
    _require_dir(root)
    candidates = sorted({p.name[: -len(suffix)] for suffix in PAIR_SUFFIXES for p in root.glob(f"*{suffix}")})
    if len(candidates) != 1:
        found = ", ".join(candidates) or "none"
        raise DataError(f"expected one <name>_pairs.tsv or <name>_pairs.csv (found names: {found})", root)
    return candidates[0]


def read_microlens(
    root: Path, name: str | None = None, cover_dir: str = "covers", video_dir: str = "videos"
) -> SequenceDataset:
    """Read a MicroLens-layout folder. Media folders that do not exist mean the data set
    lacks that modality; individual missing files are caught when features are cached."""
    root = Path(root)
    name = name or microlens_name(root)
    title_files = [root / f"{name}_title_en.csv", root / f"{name}_titles.csv"]
    title_file = next((p for p in title_files if p.is_file()), None)
    if title_file is None:
        raise DataError(f"no title file ({title_files[0].name} or {title_files[1].name})", root)
    item_ids, titles = read_item_titles_csv(title_file)
    index = {item: i + 1 for i, item in enumerate(item_ids)}
    tsv, csv_pairs = root / f"{name}_pairs.tsv", root / f"{name}_pairs.csv"
    if tsv.is_file() and csv_pairs.is_file():
        raise DataError(f"both {tsv.name} and {csv_pairs.name} exist; keep one", root)
    if csv_pairs.is_file():
        user_ids, items, offsets, dropped = read_user_sequences_csv(csv_pairs, index)
    else:
        user_ids, items, offsets, dropped = read_user_sequences_tsv(tsv, index)
    covers, videos = root / cover_dir, root / video_dir
    return SequenceDataset(
        name=name,
        root=root,
        item_ids=item_ids,
        user_ids=user_ids,
        items=items,
        offsets=offsets,
        titles=titles,
        cover_paths=[covers / f"{item}.jpg" for item in item_ids] if covers.is_dir() else None,
        video_paths=[videos / f"{item}.mp4" for item in item_ids] if videos.is_dir() else None,
        dropped_users=dropped,
    )


def read_amazon(root: Path) -> SequenceDataset:
    """Read an Amazon-layout folder (text only), decoding the HTML entities in titles."""
    root = Path(root)
    _require_dir(root)
    item_ids, escaped_titles = read_item_titles_tsv(root / "items.tsv")
    titles = [html.unescape(title) for title in escaped_titles]
    index = {item: i + 1 for i, item in enumerate(item_ids)}
    user_ids, items, offsets, dropped = read_user_sequences_tsv(root / "users.tsv", index)
    return SequenceDataset(
        name=root.name,
        root=root,
        item_ids=item_ids,
        user_ids=user_ids,
        items=items,
        offsets=offsets,
        titles=titles,
        dropped_users=dropped,
    )
