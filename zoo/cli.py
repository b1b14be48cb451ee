"""Shared command-line plumbing: one-line errors and the metrics table."""
from __future__ import annotations

import sys
from typing import Callable

from rich.table import Table

from zoo.data.errors import DataError
from zoo.training.metrics import CUTOFFS

__all__ = ["METRIC_NAMES", "metrics_table", "run_cli"]

METRIC_NAMES = tuple(f"{kind}@{k}" for kind in ("HR", "NDCG") for k in CUTOFFS)

# Errors a user can fix (bad input, bad option, missing file); anything else is a bug and
# keeps its traceback.
USER_ERRORS = (DataError, ValueError, FileNotFoundError)


def run_cli(main: Callable[[], int]) -> None:
    """Run `main`; user errors print one line on stderr and exit with status 2."""
    try:
        sys.exit(main())
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
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


