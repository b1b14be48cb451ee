"""Shared command-line plumbing: one-line errors and the metrics table."""
from __future__ import annotations

import sys
from typing import Callable

from rich.table import Table

from crossan.zoo.errors import UserError
from crossan.zoo.training.metrics import METRIC_NAMES

__all__ = ["METRIC_NAMES", "metrics_table", "run_cli"]


def run_cli(main: Callable[[], int]) -> None:
    """Run `main`; a `UserError` prints one line on stderr and exits with status 2.

    Any other exception is a bug and keeps its traceback (a plain `ValueError` included).
    """
    try:
        sys.exit(main())
    except UserError as error:
        # One line even if a message slipped in a newline (e.g. from a wrapped library error).
        message = " ".join(str(error).splitlines())
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


def metrics_table(title: str, rows: list[tuple[str, dict[str, float]]]) -> Table:
    """A rich table with one row per (label, metrics)."""
    table = Table(title=title)
    table.add_column("run")
    for name in METRIC_NAMES:
        table.add_column(name, justify="right")
    for label, metrics in rows:
        table.add_row(label, *(f"{metrics[name]:.4f}" for name in METRIC_NAMES))
    return table


