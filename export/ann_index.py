"""Approximate top-k over the item-embedding table with FAISS, for catalogues too large to score in full.

    index = open_index(export_dir / TABLE_FILE, table, HnswParameters())
    rows = ann_top_k_rows(index, user_vectors, table, histories, k=10)

The index ranks by inner product, the score the exact path uses. It is saved beside the table
(`item_index.faiss`) with a JSON sidecar (`item_index.json`) naming the table it was built from
(sha256 of the table file) and its build parameters; `open_index` reads it back only when both
match and otherwise builds and saves a new one, so a re-exported table never meets a stale index.

NumPy and faiss only, never PyTorch or the zoo, so serving stays small
(tests/test_serving_imports.py checks it).
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from crossan.export.ranking import PAD, check_finite_scores, top_k_rows
from crossan.zoo.core.atomic import atomic_write

__all__ = [
    "INDEX_FILE",
    "SIDECAR_FILE",
    "HnswParameters",
    "IvfParameters",
    "IvfPqParameters",
    "IndexParameters",
    "table_fingerprint",
    "build_index",
    "save_index",
    "open_index",
    "ann_top_k_rows",
]

INDEX_FILE = "item_index.faiss"
SIDECAR_FILE = "item_index.json"
# faiss warns when k-means gets fewer than 39 training points per inverted list.
MIN_POINTS_PER_LIST = 39


def _check_positive(parameters: IndexParameters) -> None:
    for name, value in asdict(parameters).items():
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{type(parameters).__name__}.{name} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class HnswParameters:
    """An HNSW graph over the items (the default): no training, and its recall does not rest on the
    table having clusters, as IVF's does (benchmarks/retrieval.py; README, "Approximate top-k").

    Defaults from benchmarks/retrieval.py on 10^6 synthetic 64-d items (recall@10 0.969; 0.899 at
    `ef_search` 128): `m` = 32 graph links per item (adds about 2 * m * 4 bytes per item),
    `ef_construction` = 64 candidates kept while inserting (higher: better graph, slower build),
    `ef_search` = 256 candidates kept while searching (higher: better recall, fewer queries/s;
    a search for more results than `ef_search` widens it to that many). `ef_search` is applied at
    search time, so changing it reuses a saved index.
    """

    m: int = 32
    ef_construction: int = 64
    ef_search: int = 256

    def __post_init__(self) -> None:
        _check_positive(self)

    def build_settings(self) -> dict[str, Any]:
        """What the saved index depends on (and what its sidecar records)."""
        return {"kind": "hnsw", "m": self.m, "ef_construction": self.ef_construction}

    def empty_index(self, vectors: np.ndarray) -> faiss.Index:
        """An empty inner-product HNSW graph for rows like `vectors [N, D]` (it needs no training)."""
        index = faiss.IndexHNSWFlat(vectors.shape[1], self.m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = self.ef_construction
        return index

    def set_search_parameters(self, index: faiss.Index) -> None:
        """Apply `ef_search` to an HNSW `index`."""
        faiss.ParameterSpace().set_index_parameter(index, "efSearch", self.ef_search)


@dataclass(frozen=True)
class IvfParameters:
    """Inverted lists over k-means cells (IVF-flat): about a tenth of HNSW's build time and half its
    memory; recall as good as HNSW's on a clustered table, far lower on one without clusters.

    `nlist` = 1024 cells (suits about 10^6 items: raise it with the catalogue, to about sqrt(N) to
    4 sqrt(N); capped at one per 39 items, faiss's minimum for training), of which a search scans
    the `nprobe` = 16 whose centroids score best (recall@10 0.976 on the benchmark's 10^6 table).
    `nprobe` is applied at search time, so changing it reuses a saved index.
    """

    nlist: int = 1024
    nprobe: int = 16

    def __post_init__(self) -> None:
        _check_positive(self)

    def build_settings(self) -> dict[str, Any]:
        """What the saved index depends on (and what its sidecar records)."""
        return {"kind": "ivf", "nlist": self.nlist}

    def empty_index(self, vectors: np.ndarray) -> faiss.Index:
        """An empty inner-product IVF-flat index with its cells trained on `vectors [N, D]` (at most one
        cell per `MIN_POINTS_PER_LIST` rows)."""
        count, dim = vectors.shape
        nlist = min(self.nlist, max(1, count // MIN_POINTS_PER_LIST))
        index = faiss.index_factory(dim, f"IVF{nlist},Flat", faiss.METRIC_INNER_PRODUCT)
        index.train(vectors)
        return index

    def set_search_parameters(self, index: faiss.Index) -> None:
        """Apply `nprobe` to an IVF `index`."""
        faiss.extract_index_ivf(index).nprobe = self.nprobe


@dataclass(frozen=True)
class IvfPqParameters:
    """Inverted lists whose items are stored as product-quantised codes (IVF-PQ): `m` bytes per
    item instead of the table's 4 * D, for catalogues whose table or flat index no longer fits
    in memory (docs/scaling.md: 10^7 items and up).

    The codes' scores are approximate, so a search asks for `RERANK_FACTOR` times the candidates
    and `ann_top_k_rows` orders them by their exact scores from the table before keeping the top
    k. `nlist` and `nprobe` as for `IvfParameters`; `m` sub-quantisers, each coding D / m
    dimensions of an item in one byte (8 bits; fewer on a catalogue too small to train 256
    centroids per sub-quantiser at faiss's 39 points each). D must be a multiple of `m`.
    """

    nlist: int = 1024
    m: int = 16
    nprobe: int = 16

    def __post_init__(self) -> None:
        _check_positive(self)

    def build_settings(self) -> dict[str, Any]:
        """What the saved index depends on (and what its sidecar records)."""
        return {"kind": "ivfpq", "nlist": self.nlist, "m": self.m}

    def empty_index(self, vectors: np.ndarray) -> faiss.Index:
        """An empty inner-product IVF-PQ index with its cells and codebooks trained on `vectors [N, D]`."""
        count, dim = vectors.shape
        if dim % self.m:
            raise ValueError(f"IvfPqParameters.m must divide the embedding width {dim}, got {self.m}")
        nlist = min(self.nlist, max(1, count // MIN_POINTS_PER_LIST))
        bits = int(min(PQ_BITS, max(1, np.floor(np.log2(max(2, count // MIN_POINTS_PER_LIST))))))
        index = faiss.index_factory(dim, f"IVF{nlist},PQ{self.m}x{bits}", faiss.METRIC_INNER_PRODUCT)
        index.train(vectors)
        return index

    def set_search_parameters(self, index: faiss.Index) -> None:
        """Apply `nprobe` to an IVF-PQ `index`."""
        faiss.extract_index_ivf(index).nprobe = self.nprobe


PQ_BITS = 8
"""Bits per sub-quantiser code: one byte, the size faiss's fast PQ scanners are built for."""
RERANK_FACTOR = 4
"""How many times the wanted candidates a search over approximate (quantised) scores asks for,
before their exact scores order them."""


IndexParameters = HnswParameters | IvfParameters | IvfPqParameters
"""An index kind's parameters: each builds its own index (`empty_index`) and applies its own search-time
settings (`set_search_parameters`), so the code that builds, opens and searches indexes is the same for all."""


def table_fingerprint(path: Path) -> str:
    """sha256 of the table file: any change to the embeddings or the item ids changes it."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 24):
            digest.update(block)
    return digest.hexdigest()


def build_index(table: np.ndarray, parameters: IndexParameters) -> faiss.Index:
    """An inner-product index over the rows of `table [N, D]`; index label i is table row i."""
    vectors = np.ascontiguousarray(table, dtype=np.float32)
    index = parameters.empty_index(vectors)
    index.add(vectors)
    parameters.set_search_parameters(index)
    return index


def _read_saved(index_path: Path, sidecar_path: Path, expected: dict[str, Any]) -> faiss.Index | None:
    """The saved index when its sidecar records `expected` and the file reads back with the table's shape.

    A missing or stale pair is rebuilt quietly (the table changed); an index file that its
    sidecar vouches for but that does not read back, or holds another shape, is damaged: it is
    rebuilt too, with a warning naming it."""
    try:
        recorded = json.loads(sidecar_path.read_text())
    except (OSError, ValueError):
        return None
    if recorded != expected or not index_path.is_file():
        return None
    try:
        index = faiss.read_index(str(index_path))
    except RuntimeError as error:
        warnings.warn(f"{index_path}: unreadable ({' '.join(str(error).split())[:200]}); rebuilding it", stacklevel=4)
        return None
    count, dim = expected["table_shape"]
    if (index.ntotal, index.d) != (count, dim):
        warnings.warn(
            f"{index_path}: holds {index.ntotal} x {index.d} vectors, its table {count} x {dim}; rebuilding it",
            stacklevel=4,
        )
        return None
    return index


def _expected_sidecar(table_path: Path, table: np.ndarray, parameters: IndexParameters) -> dict[str, Any]:
    return {
        "table_sha256": table_fingerprint(table_path),
        "table_shape": list(table.shape),
        "parameters": parameters.build_settings(),
    }


def save_index(table_path: Path, table: np.ndarray, index: faiss.Index, parameters: IndexParameters) -> None:
    """Save `index` (of `table`, as saved at `table_path`) beside the table: the old sidecar removed
    first, then the index and the new sidecar, each written atomically.

    A folder that cannot be written to (a read-only volume) gets a warning instead.
    """
    table_path = Path(table_path)
    index_path, sidecar_path = table_path.with_name(INDEX_FILE), table_path.with_name(SIDECAR_FILE)
    expected = _expected_sidecar(table_path, table, parameters)
    try:
        sidecar_path.unlink(missing_ok=True)
        atomic_write(index_path, lambda path: faiss.write_index(index, path))
        atomic_write(sidecar_path, lambda path: Path(path).write_text(json.dumps(expected, indent=2) + "\n"))
    except OSError as error:
        warnings.warn(
            f"could not save the FAISS index beside {table_path} ({error}); it will be rebuilt next time", stacklevel=3
        )


def open_index(table_path: Path, table: np.ndarray, parameters: IndexParameters) -> faiss.Index:
    """The index of `table` (loaded from `table_path`), read from beside the table when it was built
    from this file with these build parameters, else built and saved there (`save_index`)."""
    table_path = Path(table_path)
    index_path, sidecar_path = table_path.with_name(INDEX_FILE), table_path.with_name(SIDECAR_FILE)
    index = _read_saved(index_path, sidecar_path, _expected_sidecar(table_path, table, parameters))
    if index is not None:
        parameters.set_search_parameters(index)
        return index
    index = build_index(table, parameters)
    save_index(table_path, table, index, parameters)
    return index


def _quantised(index: faiss.Index) -> bool:
    """Whether `index` scores by product-quantised codes (approximate scores), not stored vectors."""
    try:
        inverted = faiss.extract_index_ivf(index)
    except RuntimeError:  # not an inverted-list index (HNSW)
        return False
    return isinstance(faiss.downcast_index(inverted), faiss.IndexIVFPQ)


def _search_size(wanted: int, catalogue: int) -> int:
    """Candidates to ask for: `wanted` rounded up to a power of two (so users batch together), at most the catalogue."""
    return min(catalogue, 1 << max(0, wanted - 1).bit_length())


def ann_top_k_rows(
    index: faiss.Index,
    user_vectors: np.ndarray,
    item_table: np.ndarray,
    histories: Sequence[np.ndarray],
    k: int,
    item_names: Sequence[str] | None = None,
) -> list[np.ndarray]:
    """Per user, the `k` best catalogue rows that `index` finds, best first, none from the history
    (1-based item indices, as for `crossan.export.ranking.top_k_rows`).

    Each user's search asks for `k` + (distinct history items) candidates, so removing the
    history still leaves `k` (`RERANK_FACTOR` times as many from a quantised index, whose
    candidates are then ordered by their exact scores from `item_table`); a user left short
    (the index returned fewer) is searched again with twice as many, and one still short after
    asking for the whole catalogue is ranked exactly.
    Every user gets min(k, catalogue - history) rows. A NaN or infinite score raises
    `NonFiniteScoreError` (items named by `item_names`, else by row).
    """
    vectors = np.ascontiguousarray(user_vectors, dtype=np.float32)
    catalogue = item_table.shape[0]
    seen = [np.unique(np.asarray(history, dtype=np.int64)) for history in histories]
    seen = [rows[rows != PAD] - 1 for rows in seen]
    wanted = [min(k, catalogue - len(rows)) for rows in seen]
    factor = RERANK_FACTOR if _quantised(index) else 1
    sizes = {user: _search_size(factor * (k + len(rows)), catalogue) for user, rows in enumerate(seen)}
    ranked = [np.empty(0, dtype=np.int64)] * len(seen)
    pending, exhausted = list(range(len(seen))), []
    while pending:
        groups: dict[int, list[int]] = defaultdict(list)
        for user in pending:
            groups[sizes[user]].append(user)
        pending = []
        for size, users in groups.items():
            distances, found = index.search(vectors[users], size)
            if not np.isfinite(distances[found >= 0]).all():  # name the users and items from exact scores
                with np.errstate(over="ignore", invalid="ignore"):
                    scores = vectors[users] @ np.asarray(item_table, dtype=np.float32).T
                check_finite_scores(scores, item_names, users)
            for user, rows in zip(users, found, strict=True):
                rows = rows[rows >= 0]
                rows = rows[~np.isin(rows, seen[user])]
                if factor > 1:  # quantised scores found the candidates; exact ones order them
                    exact = np.asarray(item_table[rows], dtype=np.float32) @ vectors[user]
                    rows = rows[np.argsort(-exact, kind="stable")]
                if len(rows) >= wanted[user]:
                    ranked[user] = rows[:k]
                elif size >= catalogue:
                    exhausted.append(user)
                else:
                    sizes[user] = min(catalogue, 2 * size)
                    pending.append(user)
    if exhausted:
        for user, rows in zip(
            exhausted,
            top_k_rows(vectors[exhausted], item_table, [histories[user] for user in exhausted], k, item_names),
            strict=True,
        ):
            ranked[user] = rows
    return ranked
