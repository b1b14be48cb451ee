"""The command line of the batch recommendations (`crossan batch`, `python -m crossan.export.batch`).

Kept apart from the job (`crossan.export.batch`) so that `--help` loads neither ONNX Runtime nor
PyTorch; the job and the recommender are imported when the command runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["INDEX_CHOICES", "LAYOUT", "build_parser", "main"]

LAYOUT = "user<TAB>item item ..."
"""A users file's line: the user id, a tab, the history's item ids oldest first."""
INDEX_CHOICES = ("exact", "faiss")
"""`OnnxRecommender`'s index kinds (`crossan.export.serve.INDEX_KINDS`; a test keeps them equal)."""


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The options of `crossan batch`."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Top-k recommendations for every user of a users file, written to one Parquet file "
        "(columns user, rank, item, score), resumable after a kill and sharded with --shard I/N "
        "(docs/serving.md, 'Batch recommendations').",
    )
    parser.add_argument("--export", type=Path, required=True, help="export folder (python -m crossan.export)")
    parser.add_argument("--users", type=Path, required=True, help=f"users file, {LAYOUT!r} per line")
    parser.add_argument("--k", type=int, required=True, help="items per user")
    parser.add_argument("--out", type=Path, required=True, help="Parquet file to write")
    parser.add_argument(
        "--shard", default="0/1", help="I/N: the users at positions I, I + N, I + 2N, ... (default 0/1)"
    )
    parser.add_argument("--index", choices=INDEX_CHOICES, default="exact", help="exact scan or FAISS (approximate)")
    parser.add_argument("--batch-size", type=int, default=1024, help="users ranked at a time: one row group each")
    parser.add_argument(
        "--threads",
        type=int,
        help="ONNX Runtime's intra-op threads per session, and FAISS's with --index faiss "
        "(default: their own, one per core); NumPy's follow OMP_NUM_THREADS",
    )
    return parser


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Rank every user of the shard into the output; finished, resumed or refused in one line."""
    args = build_parser(prog).parse_args(argv)
    from rich.console import Console

    from crossan.export.batch import BatchJob, Shard, check_positive_option, run_job, summary
    from crossan.export.serve import OnnxRecommender

    job = BatchJob(args.users, args.k, args.out, Shard.parse(args.shard), args.batch_size)
    if args.threads is not None:
        check_positive_option("threads", args.threads)
    console = Console()
    progress = run_job(OnnxRecommender(args.export, index=args.index, threads=args.threads), job, console)
    console.print(summary(job, progress), highlight=False, soft_wrap=True)
    return 0
