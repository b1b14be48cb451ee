"""Batch recommendations on Ray Data: the shards of `crossan.export.batch` are the rows of a data set,
ranked by a pool of actors that each hold one `OnnxRecommender`.

    pip install -e ".[ray]"
    python -m crossan.export.ray_batch --export weights/<run>/export --users users.tsv --k 100 --out recs --shards 8

`--out` becomes a folder of Parquet files, `shard-00000-of-00008.parquet` and so on, each written by
`crossan.export.batch.run_job` with its own progress record (hidden, beside it): a rerun after a
failure skips the finished shards and resumes the others, and the folder reads as one table
(`pyarrow.parquet.read_table(DIR)`). Without `--address`, Ray starts on this machine; `--address auto`
joins a running cluster (`ray.init(address="auto")`), where the export, the users file and the output
folder must be on storage that every node sees under the same paths.

Ray is an optional extra: this module imports it only when it runs, so `--help` works without it.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Literal

import numpy as np
from rich.console import Console

from crossan.export.batch import BatchJob, Shard, check_users, run_job
from crossan.export.batch_command import LAYOUT
from crossan.export.serve import INDEX_KINDS, OnnxRecommender
from crossan.zoo.cli.options import run_cli
from crossan.zoo.core.errors import ConfigError

__all__ = ["ShardRanker", "shard_path", "run_shards", "main"]


ACTOR_CPUS = 1
"""CPUs Ray reserves for each actor, and the threads its recommender runs on."""


def shard_path(out: Path, shard: Shard) -> Path:
    """The Parquet file of `shard` in the output folder `out`."""
    return out / f"shard-{shard.index:05d}-of-{shard.count:05d}.parquet"


class ShardRanker:
    """A Ray Data actor: one `OnnxRecommender`, opened once, that ranks whole shards with `run_job`."""

    def __init__(
        self,
        export: Path,
        index: Literal["exact", "faiss"],
        users: Path,
        k: int,
        out: Path,
        shards: int,
        batch_size: int,
    ) -> None:
        # Ray reserves ACTOR_CPUS for the actor: its sessions and FAISS take as many threads, not one per core.
        self.recommender = OnnxRecommender(export, index=index, threads=ACTOR_CPUS)
        self.users, self.k, self.out, self.shards, self.batch_size = users, k, out, shards, batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """`batch["shard"]`: shard numbers -> per shard its file, users ranked and skipped, and rows."""
        results: dict[str, list[Any]] = {"shard": [], "path": [], "users_ranked": [], "users_skipped": [], "rows": []}
        for number in batch["shard"].tolist():
            shard = Shard(number, self.shards)
            job = BatchJob(self.users, self.k, shard_path(self.out, shard), shard, self.batch_size)
            progress = run_job(self.recommender, job)
            for key, value in (
                ("shard", number),
                ("path", str(job.out)),
                ("users_ranked", progress.users_ranked),
                ("users_skipped", progress.users_skipped),
                ("rows", progress.rows),
            ):
                results[key].append(value)
        return {key: np.array(values) for key, values in results.items()}


def run_shards(
    export: Path,
    users: Path,
    k: int,
    out: Path,
    shards: int,
    index: Literal["exact", "faiss"] = "exact",
    batch_size: int = 1024,
    workers: int = 1,
    address: str | None = None,
) -> list[dict[str, Any]]:
    """Rank every user of `users` into `out/shard-*.parquet`, `shards` shards over `workers` actors, and
    return a summary per shard. The actors run on the Ray cluster this process is connected to, or
    else on the one at `address` (`"auto"`: the cluster of this node; None: a new local one). The
    arguments, the users file and the export are checked first, so that their faults are one line
    and come before Ray starts; opening the export here also builds and saves its FAISS index once,
    before the actors read it."""
    import ray

    if shards < 1 or workers < 1:
        raise ConfigError(f"--shards and --workers must be positive integers, got {shards} and {workers}")
    BatchJob(users, k, out, Shard(0, shards), batch_size)
    check_users(users)
    OnnxRecommender(export, index=index)
    if not ray.is_initialized():
        ray.init(address=address)
    dataset = ray.data.from_items([{"shard": number} for number in range(shards)], override_num_blocks=shards)
    ranked = dataset.map_batches(
        ShardRanker,
        fn_constructor_kwargs={
            "export": export.resolve(),
            "index": index,
            "users": users.resolve(),
            "k": k,
            "out": out.resolve(),
            "shards": shards,
            "batch_size": batch_size,
        },
        batch_size=1,
        concurrency=workers,
        num_cpus=ACTOR_CPUS,
    )
    return sorted(ranked.take_all(), key=lambda row: int(row["shard"]))


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The options of `python -m crossan.export.ray_batch`."""
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--export", type=Path, required=True, help="export folder (python -m crossan.export)")
    parser.add_argument("--users", type=Path, required=True, help=f"users file, {LAYOUT!r} per line")
    parser.add_argument("--k", type=int, required=True, help="items per user")
    parser.add_argument("--out", type=Path, required=True, help="output folder: one Parquet file per shard")
    parser.add_argument("--shards", type=int, required=True, help="shards (files), ranked one at a time per actor")
    parser.add_argument("--workers", type=int, default=1, help="actors, each with its own OnnxRecommender")
    parser.add_argument("--index", choices=INDEX_KINDS, default="exact", help="exact scan or FAISS (approximate)")
    parser.add_argument("--batch-size", type=int, default=1024, help="users ranked at a time: one row group each")
    parser.add_argument("--address", help="a Ray cluster to join, e.g. auto (default: start Ray on this machine)")
    return parser


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Check the arguments, start or join Ray, rank every shard, print a line per shard."""
    args = build_parser(prog).parse_args(argv)
    summaries = run_shards(
        args.export, args.users, args.k, args.out, args.shards, args.index, args.batch_size, args.workers, args.address
    )
    console = Console()
    for row in summaries:
        console.print(
            f"{row['path']}: {row['rows']} rows for {row['users_ranked']} users, {row['users_skipped']} skipped",
            highlight=False,
            soft_wrap=True,
        )
    return 0


if __name__ == "__main__":
    run_cli(main)
