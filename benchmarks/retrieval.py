"""Top-10 retrieval over an item table: exact scoring vs the FAISS indexes of crossan.export.ann_index, on this CPU.

    python benchmarks/retrieval.py [--items 1000000] [--dim 64] [--queries 1000] [--json]
    python benchmarks/retrieval.py --table weights/<run>/export/item_embeddings.safetensors

The table is synthetic unless `--table` names an exported one. Synthetic items are a Gaussian
mixture, one cluster ("genre") per 500 items: item = (cluster centre + 0.7 * noise) times a
log-normal popularity factor, so norms differ and the inner product, not the cosine, ranks.
A synthetic query is a user with two interests: the mean of five items from two clusters plus
0.3 * noise. With `--table`, a query is a random row plus noise of 0.3 times each dimension's
standard deviation.

For each method, in one run and on the same queries:

- recall@10: the mean share of the exact top-10 it returns (exact: 1 by definition);
- queries/s: all queries in one batch, on all of faiss's (and NumPy's BLAS) threads; the indexes
  take the median of 3 passes after an untimed one, exact one pass (long enough at 10^6 items):
  NumPy matmul + argpartition in chunks of 32 queries, the cheapest full scan (serving's exact
  path sorts all scores, which is slower still);
- build seconds and index bytes (`faiss.serialize_index`; exact: the table itself).

HNSW is built once (`m`, `ef_construction` from `HnswParameters`) and searched at three
`ef_search` values; IVF-flat likewise at two `nprobe` values, and IVF-PQ (16 one-byte codes per
item) at the same two, searched as serving searches it (`ann_top_k_rows`: four times the
candidates from the codes, ordered by their exact scores from the table). `--json` prints one object keyed by
method name, each entry with `recall@10`, `queries_per_s`, `build_s`, `index_bytes` and
`parameters`, plus a `setup` entry. At 10^6 items a run takes 2 to 5 minutes on two cores, most
of it the HNSW build, and about 2 GB of memory.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from machine import cpu_name
from rich.console import Console
from rich.table import Table
from timing import median_seconds, timed_call

from crossan.export.ann_index import (
    HnswParameters,
    IndexParameters,
    IvfParameters,
    IvfPqParameters,
    ann_top_k_rows,
    build_index,
)
from crossan.export.item_table import load_item_table

K = 10
DEFAULT_ITEMS = 1_000_000
DEFAULT_DIM = 64
PASSES = 3
EXACT_CHUNK = 32
ITEMS_PER_CLUSTER = 500
HNSW_EF_SEARCH = (128, HnswParameters().ef_search, 512)
IVF_NPROBE = (8, IvfParameters().nprobe)


def synthetic_table(items: int, dim: int, queries: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`(table [items, dim], queries [queries, dim])`, float32, as the module docstring describes."""
    rng = np.random.default_rng(seed)
    clusters = max(1, items // ITEMS_PER_CLUSTER)
    centres = rng.standard_normal((clusters, dim), dtype=np.float32)
    labels = rng.permutation(np.arange(items) % clusters)
    table = centres[labels] + np.float32(0.7) * rng.standard_normal((items, dim), dtype=np.float32)
    table *= rng.lognormal(0.0, 0.2, (items, 1)).astype(np.float32)
    members = np.argsort(labels, kind="stable")
    starts = np.searchsorted(labels[members], np.arange(clusters + 1))
    interests = rng.integers(0, clusters, (queries, 2))[:, [0, 1, 0, 1, 0]]
    sizes = starts[interests + 1] - starts[interests]
    picks = starts[interests] + (rng.random(interests.shape) * sizes).astype(np.int64)
    users = table[members[picks]].mean(axis=1)
    users += np.float32(0.3) * rng.standard_normal(users.shape, dtype=np.float32)
    return table, users


def table_queries(table: np.ndarray, queries: int, seed: int) -> np.ndarray:
    """Random rows of `table` plus noise of 0.3 times each dimension's standard deviation."""
    rng = np.random.default_rng(seed)
    rows = table[rng.integers(0, len(table), queries)]
    return (rows + 0.3 * table.std(axis=0) * rng.standard_normal(rows.shape)).astype(np.float32)


def exact_top_k(table: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """The `K` best rows per query by inner product (unordered: recall needs only the set)."""
    found = []
    for start in range(0, len(queries), EXACT_CHUNK):
        scores = queries[start : start + EXACT_CHUNK] @ table.T
        # Copied: a view would keep the chunk's whole [32, N] index array alive.
        found.append(np.argpartition(-scores, K - 1, axis=1)[:, :K].copy())
    return np.concatenate(found)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of each query's true top-`K` among its `K` found rows."""
    return float(np.mean([len(np.intersect1d(f, t)) / K for f, t in zip(found, truth, strict=True)]))


def measure(table: np.ndarray, queries: np.ndarray) -> dict[str, dict[str, Any]]:
    """Every method's figures, keyed by method name."""
    truth, seconds = timed_call(lambda: exact_top_k(table, queries))
    report = {
        "exact": {
            "recall@10": 1.0,
            "queries_per_s": len(queries) / seconds,
            "build_s": 0.0,
            "index_bytes": table.nbytes,
            "parameters": {},
        }
    }
    builds: list[tuple[str, IndexParameters, list[IndexParameters]]] = [
        ("hnsw", HnswParameters(), [HnswParameters(ef_search=ef) for ef in HNSW_EF_SEARCH]),
        ("ivf", IvfParameters(), [IvfParameters(nprobe=nprobe) for nprobe in IVF_NPROBE]),
        ("ivfpq", IvfPqParameters(), [IvfPqParameters(nprobe=nprobe) for nprobe in IVF_NPROBE]),
    ]
    no_history = [np.empty(0, dtype=np.int64)] * len(queries)
    for kind, build_parameters, searches in builds:
        index, build_s = timed_call(functools.partial(build_index, table, build_parameters))
        index_bytes = int(faiss.serialize_index(index).nbytes)
        for parameters in searches:
            parameters.set_search_parameters(index)
            # IVF-PQ as serving searches it: RERANK_FACTOR times the candidates from the codes,
            # ordered by their exact scores from the table.
            search = (
                functools.partial(ann_top_k_rows, index, queries, table, no_history, K)
                if kind == "ivfpq"
                else functools.partial(lambda index: index.search(queries, K)[1], index)
            )
            found = search()  # untimed: the recall's pass, and the warm-up
            seconds = median_seconds(search, PASSES, warmup=0)
            knob = "ef_search" if kind == "hnsw" else "nprobe"
            name = f"{kind} {knob}={getattr(parameters, knob)}"
            report[name] = {
                "recall@10": recall(found, truth),
                "queries_per_s": len(queries) / seconds,
                "build_s": build_s,
                "index_bytes": index_bytes,
                "parameters": {**parameters.build_settings(), **vars(parameters)},
            }
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, help="synthetic items (default 10^6)")
    parser.add_argument("--dim", type=int, help="synthetic embedding width (default 64)")
    parser.add_argument("--queries", type=int, default=1000, help="queries (default 1000)")
    parser.add_argument("--table", type=Path, help="an exported item_embeddings.safetensors instead of synthetic items")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args()
    if args.table and (args.items is not None or args.dim is not None):
        parser.error("--items and --dim shape the synthetic table; --table brings its own")
    items = DEFAULT_ITEMS if args.items is None else args.items
    dim = DEFAULT_DIM if args.dim is None else args.dim
    if items < K or dim < 1 or args.queries < 1:
        parser.error(f"--items must be at least {K}, --dim and --queries positive")
    if args.table:
        table, _ = load_item_table(args.table)
        queries, source = table_queries(table, args.queries, args.seed), str(args.table)
    else:
        table, queries = synthetic_table(items, dim, args.queries, args.seed)
        source = "synthetic"
    report = measure(table, queries)
    setup = {
        "source": source,
        "items": table.shape[0],
        "dim": table.shape[1],
        "queries": len(queries),
        "threads": faiss.omp_get_max_threads(),
        "cpu": cpu_name(),
        "faiss": faiss.__version__,
    }
    if args.json:
        print(json.dumps({**report, "setup": setup}))
        return 0
    exact_rate = report["exact"]["queries_per_s"]
    table_view = Table(
        title=f"top-{K} retrieval, {setup['items']:,} x {setup['dim']} items ({source}), {setup['queries']} queries",
        caption=f"{setup['cpu']}; {setup['threads']} thread(s); indexes: median of {PASSES} passes, "
        f"exact: one pass; "
        f"faiss {setup['faiss']}",
    )
    for column in ("method", "recall@10", "queries/s", "x exact", "build s", "index MB"):
        table_view.add_column(column, justify="left" if column == "method" else "right")
    for name, entry in report.items():
        table_view.add_row(
            name,
            f"{entry['recall@10']:.3f}",
            f"{entry['queries_per_s']:,.0f}",
            f"{entry['queries_per_s'] / exact_rate:.1f}",
            f"{entry['build_s']:.1f}",
            f"{entry['index_bytes'] / 2**20:,.0f}",
        )
    # Rich falls back to 80 columns when stdout is not a terminal, which would wrap the table.
    Console(width=None if sys.stdout.isatty() else 120).print(table_view)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
