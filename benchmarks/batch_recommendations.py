"""The nightly batch recommendations (`python -m crossan.export.batch`): users/s and peak memory, exact and FAISS.

    python benchmarks/batch_recommendations.py [--items 100000] [--users 10000 100000 1000000] [--k 10] [--json]
    python benchmarks/batch_recommendations.py --items 5000 --users 1000 2000 --threads 1 --workdir /tmp/batch

Set-up, once under `--workdir` (default: a temporary folder; a given folder keeps what was built
and the next run reuses it):

- an export folder: a `sasrec-id` model with random weights, exported by
  `crossan.export.exporter.export_model` (the encoders `python -m crossan.export` writes, without
  its validation report), and a synthetic item table of `--items` items (the Gaussian mixture of
  benchmarks/retrieval.py, as wide as the model's item embeddings) saved with `save_item_table`
  in place of the model's own item embeddings; the FAISS index is built beside it by
  `OnnxRecommender(..., index="faiss")` with the package's default parameters (`HnswParameters()`);
- per `--users` size, a users file in the Amazon layout (`user<TAB>item item ...`), histories of
  3 to 50 item ids of the table drawn uniformly at random.

Then, for each size and each index of `--indexes` (`exact`, `faiss`; both by default), the batch
command ranks the whole file in a fresh process (`--k`, its default `--batch-size` unless given):
seconds are its wall time, interpreter start, imports and loading the export (and the saved index)
included, as a nightly job pays them; users/s are users ranked over those seconds; peak MB is the
process's peak resident memory (`VmHWM`, read as it exits: `ru_maxrss` would count the memory of
the benchmark process that started it); output MB and rows written are the Parquet file's. Each
output is deleted once measured. The exact path scores each user against the whole catalogue, so
its time, and its peak memory (the batch size times the catalogue), grow with the catalogue.

The outputs of the smallest size are compared with `OnnxRecommender.recommend` (and
`recommend_scored`, for the scores) on a sample of its users (`--sample`), with the same index:
a list is identical when its items and their order are, and every score is within a relative
1e-5 of the command's. `--threads N` sets OMP_NUM_THREADS (and OpenBLAS's and MKL's) for the
command, which bounds NumPy's BLAS, and passes `--threads N` to it (and `threads=N` to the
recommenders this process opens), which bounds onnxruntime's intra-op threads and FAISS's.
`--json` prints one object with `setup`, `runs` and `sample_check`.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import onnxruntime
from machine import cpu_name
from rich.console import Console
from rich.table import Table
from scale import peak_rss
from timing import timed_call

from crossan.export.ann_index import INDEX_FILE
from crossan.export.batch import JobProgress, OutputFiles, read_users
from crossan.export.batch_command import INDEX_CHOICES, build_parser
from crossan.export.batch_command import main as batch_main
from crossan.export.item_table import TABLE_FILE, save_item_table
from crossan.export.serve import OnnxRecommender
from crossan.zoo.cli.options import run_cli
from crossan.zoo.core.atomic import atomic_write

PRESET = "sasrec-id"
"""The model whose user encoder is exported: every preset's user encoder is the same SASRec
transformer over item embeddings."""
SEED = 0
MIN_HISTORY, MAX_HISTORY = 3, 50
WRITE_CHUNK = 100_000
"""Users a users file is written by at a time."""
SCORE_RTOL = 1e-5
CHILD = "--run-command"
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def item_ids(items: int) -> list[str]:
    """The synthetic catalogue's item ids, in table order."""
    return [f"i{n}" for n in range(items)]


def build_export(folder: Path, items: int) -> None:
    """The export folder the module docstring describes; kept when its item table, written last, is there."""
    if (folder / TABLE_FILE).is_file():
        return
    import torch
    from retrieval import synthetic_table

    from crossan.export.exporter import export_model
    from crossan.zoo.models import build_model, preset_config

    torch.manual_seed(SEED)
    model = build_model(preset_config(PRESET).fit_to_data(items, {})).eval()
    export_model(model, folder)
    table, _ = synthetic_table(items, model.item_embedding_width, 0, SEED)
    save_item_table(folder / TABLE_FILE, table, item_ids(items), "synthetic (benchmarks/batch_recommendations.py)")


def write_users(path: Path, users: int, items: int) -> None:
    """`users` users with random histories over the export's item ids, written atomically (kept if there)."""
    if path.is_file():
        return
    rng = np.random.default_rng([SEED, users])
    ids = item_ids(items)

    def write(temporary: str) -> None:
        with open(temporary, "w") as handle:
            for start in range(0, users, WRITE_CHUNK):
                lengths = rng.integers(MIN_HISTORY, MAX_HISTORY + 1, min(WRITE_CHUNK, users - start))
                drawn = rng.integers(0, items, int(lengths.sum())).tolist()
                ends = np.cumsum(lengths).tolist()
                handle.writelines(
                    f"u{start + n}\t{' '.join(ids[item] for item in drawn[end - length : end])}\n"
                    for n, (end, length) in enumerate(zip(ends, lengths.tolist(), strict=True))
                )

    atomic_write(path, write)


def run_command(argv: list[str]) -> None:
    """Child mode: the batch command with `argv[1:]`, as `python -m crossan.export.batch` runs it; its
    peak resident bytes are written to `argv[0]` as it exits."""
    peak_file, *command = argv
    try:
        run_cli(functools.partial(batch_main, command))
    finally:
        Path(peak_file).write_text(str(peak_rss()))


def measure(
    export: Path,
    users_file: Path,
    out: Path,
    index: str,
    k: int,
    batch_size: int | None,
    threads: int | None,
    env: dict[str, str],
) -> dict[str, Any]:
    """Rank `users_file` into `out` with the batch command in a fresh process: its seconds, peak memory and output."""
    out.parent.mkdir(parents=True)
    peak_file = out.with_name("peak-bytes")
    command = ["--export", str(export), "--users", str(users_file), "--k", str(k), "--out", str(out)]
    command += ["--index", index, *([] if batch_size is None else ["--batch-size", str(batch_size)])]
    command += [] if threads is None else ["--threads", str(threads)]
    log = out.with_name("command.log")
    with log.open("w") as handle:
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), CHILD, str(peak_file), *command],
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=out.parent,
            check=False,
        )
        seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"the batch command failed ({index}, {users_file.name}):\n{log.read_text()[-3000:]}")
    progress = JobProgress.load(OutputFiles(out))
    return {
        "users": progress.users_ranked,
        "index": index,
        "seconds": seconds,
        "users_per_s": progress.users_ranked / seconds,
        "peak_mb": int(peak_file.read_text()) / 2**20,
        "output_mb": out.stat().st_size / 2**20,
        "rows": progress.rows,
    }


def sample_check(
    export: Path, users_file: Path, out: Path, index: str, k: int, sample: int, threads: int | None
) -> dict[str, Any]:
    """The command's rows of `sample` random users of `users_file` against `OnnxRecommender` on their histories."""
    import pyarrow.parquet as pq

    entries = list(read_users(users_file))
    chosen = np.random.default_rng(SEED).choice(len(entries), min(sample, len(entries)), replace=False)
    users = [entries[position] for position in sorted(chosen.tolist())]
    found: dict[str, list[tuple[int, str, float]]] = {}
    for row in pq.read_table(out, filters=[("user", "in", [entry.user for entry in users])]).to_pylist():
        found.setdefault(row["user"], []).append((row["rank"], row["item"], row["score"]))
    recommender = OnnxRecommender(export, index=index, threads=threads)  # type: ignore[arg-type]  # one of INDEX_CHOICES
    histories = [entry.items for entry in users]
    lists = recommender.recommend(histories, k)
    scored = recommender.recommend_scored(histories, k)
    identical, largest = 0, 0.0
    for entry, items, expected in zip(users, lists, scored, strict=True):
        rows = found.get(entry.user, [])
        if [(rank, item) for rank, item, _ in rows] != list(enumerate(items, start=1)):
            continue
        written, served = np.array([score for *_, score in rows]), np.array([score for _, score in expected])
        largest = max(largest, float(np.abs(written - served).max(initial=0.0)))
        identical += bool(np.allclose(written, served, rtol=SCORE_RTOL, atol=0.0))
    return {"identical": identical, "sample": len(users), "max_abs_score_difference": largest}


def print_report(report: dict[str, Any]) -> None:
    setup = report["setup"]
    table = Table(
        title=f"python -m crossan.export.batch: top-{setup['k']} of {setup['items']:,} items "
        f"({setup['preset']} user encoder, random weights; synthetic items and users)",
        caption=f"{setup['cpu']}, {setup['cores']} cores; OMP_NUM_THREADS {setup['omp_num_threads'] or 'unset'}; "
        f"--threads {setup['threads'] or 'unset'}; "
        f"batch size {setup['batch_size']}; faiss index {setup['faiss_index']}; "
        f"onnxruntime {setup['onnxruntime']}, faiss {setup['faiss']}",
    )
    for column in ("users", "index", "seconds", "users/s", "peak MB", "output MB", "rows written"):
        table.add_column(column, justify="left" if column == "index" else "right")
    for run in report["runs"]:
        table.add_row(
            f"{run['users']:,}",
            run["index"],
            f"{run['seconds']:.1f}",
            f"{run['users_per_s']:,.0f}",
            f"{run['peak_mb']:,.0f}",
            f"{run['output_mb']:,.1f}",
            f"{run['rows']:,}",
        )
    # Rich falls back to 80 columns when stdout is not a terminal, which would wrap the table.
    console = Console(width=None if sys.stdout.isatty() else 120)
    console.print(table)
    for index, check in report["sample_check"].items():
        console.print(
            f"{index}: identical lists {check['identical']} / {check['sample']} of {setup['sample_users']:,} users "
            f"against OnnxRecommender.recommend (max score difference {check['max_abs_score_difference']:.2e})"
        )


def benchmark(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Build the inputs under `work`, run every size and index, check the smallest size's outputs."""
    env = dict(os.environ)
    if args.threads:
        env.update({name: str(args.threads) for name in THREAD_VARIABLES})
    export = work / f"export-{args.items}"
    build_export(export, args.items)
    index_action = "read" if (export / INDEX_FILE).is_file() else "built"
    # threads=N also bounds FAISS's index build in this process
    _, index_seconds = timed_call(lambda: OnnxRecommender(export, index="faiss", threads=args.threads))
    sizes = sorted(set(args.users))
    runs, checks = [], {}
    for users in sizes:
        users_file = work / f"users-{users}-of-{args.items}.tsv"
        write_users(users_file, users, args.items)
        for index in args.indexes:
            folder = work / f"run-{users}-{index}"
            shutil.rmtree(folder, ignore_errors=True)  # what a stopped benchmark left
            out = folder / "recommendations.parquet"
            runs.append(measure(export, users_file, out, index, args.k, args.batch_size, args.threads, env))
            if users == sizes[0]:
                checks[index] = sample_check(export, users_file, out, index, args.k, args.sample, args.threads)
            shutil.rmtree(folder)
    setup = {
        "items": args.items,
        "k": args.k,
        "preset": PRESET,
        "batch_size": args.batch_size or build_parser().get_default("batch_size"),
        "omp_num_threads": env.get("OMP_NUM_THREADS"),
        "threads": args.threads,
        "faiss_index": f"{index_action} in {index_seconds:.1f} s",
        "sample_users": sizes[0],
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "onnxruntime": onnxruntime.__version__,
        "faiss": faiss.__version__,
    }
    return {"setup": setup, "runs": runs, "sample_check": checks}


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == [CHILD]:
        run_command(argv[1:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=100_000, help="catalogue size (default 100000)")
    parser.add_argument("--users", type=int, nargs="+", default=[10_000, 100_000, 1_000_000], help="users file sizes")
    parser.add_argument("--k", type=int, default=10, help="items per user (default 10)")
    parser.add_argument(
        "--indexes", nargs="+", choices=INDEX_CHOICES, default=list(INDEX_CHOICES), help="the command's --index values"
    )
    parser.add_argument("--batch-size", type=int, help="the command's --batch-size (default: its own)")
    parser.add_argument("--sample", type=int, default=200, help="users of the smallest size checked (default 200)")
    parser.add_argument(
        "--threads",
        type=int,
        help="OMP_NUM_THREADS and --threads of the command (default: the environment's, and none)",
    )
    parser.add_argument("--workdir", type=Path, help="where inputs are built and kept (default: a temporary folder)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args(argv)
    counts = [*args.users, args.k, args.sample, *(n for n in (args.batch_size, args.threads) if n is not None)]
    if min(counts) < 1:
        parser.error("--users, --k, --batch-size, --sample and --threads must be positive")
    if args.items < MAX_HISTORY + args.k:
        parser.error(f"--items must be at least {MAX_HISTORY} + k, so that every user gets k items")
    if args.workdir is None:
        with tempfile.TemporaryDirectory(prefix="batch-benchmark-") as work:
            report = benchmark(args, Path(work))
    else:
        args.workdir.mkdir(parents=True, exist_ok=True)
        report = benchmark(args, args.workdir.resolve())
    if args.json:
        print(json.dumps(report))
    else:
        print_report(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
