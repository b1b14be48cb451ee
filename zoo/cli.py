"""Shared command-line plumbing: one-line errors, `KEY=VALUE` options, the metrics table."""
from __future__ import annotations

import dataclasses
import json
import sys
from typing import Any, Callable

from rich.table import Table

from crossan.zoo.errors import ConfigError, UserError
from crossan.zoo.training.metrics import METRIC_NAMES
from crossan.zoo.training.trainer import TrainConfig

__all__ = ["METRIC_NAMES", "metrics_table", "parse_assignments", "parse_value", "run_cli", "split_options"]


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


def split_options(values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Sort `{field: value}` into training-config fields and model-config overrides (the model
    fields are checked when the preset's config is built)."""
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    train = {k: v for k, v in values.items() if k in train_fields}
    return train, {k: v for k, v in values.items() if k not in train_fields}


def parse_assignments(pairs: list[str], what: str) -> dict[str, str]:
    """`KEY=VALUE` strings -> dict; a malformed pair is a clear error."""
    parsed: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key or not value:
            raise ConfigError(f"{what} expects KEY=VALUE, got {pair!r}")
        parsed[key.strip()] = value.strip()
    return parsed


def parse_value(text: str) -> Any:
    """JSON when it parses (numbers, booleans, lists), else the plain string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text
