"""Shared command-line plumbing: one-line errors, `KEY=VALUE` options, the metrics table."""
from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path
from typing import Any, Callable

from rich.table import Table

from crossan.zoo.core.errors import ConfigError, UserError
from crossan.zoo.training.metrics import METRIC_NAMES

__all__ = ["METRIC_NAMES", "add_data_options", "check_data_options_apply", "data_and_settings", "metrics_table",
           "option_given", "parse_assignments", "parse_value", "run_cli"]


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


def add_data_options(parser: argparse.ArgumentParser) -> None:
    """The options that name a data set and how its item features are made (train.py, the tuner)."""
    from crossan.zoo.backbones import SOURCES, TEXT_MAX_TOKENS
    from crossan.zoo.data import DATA_KINDS

    parser.add_argument("--data", default="toy", choices=DATA_KINDS)
    parser.add_argument("--data-root", type=Path, help="data folder (toy: generated under the cache dir)")
    parser.add_argument("--cover-dir", default="covers", help="MicroLens cover folder, relative to --data-root")
    parser.add_argument("--video-dir", default="videos", help="MicroLens video folder, relative to --data-root")
    parser.add_argument("--backbones", default="tiny", choices=SOURCES,
                        help="tiny: random small models (tests, demo); pretrained: the paper's hub models")
    parser.add_argument("--backbone", action="append", default=[], metavar="MODALITY=ID_OR_DIR",
                        help="per-modality backbone (hub id, local dir, or 'minilm' for text); repeatable")
    parser.add_argument("--pooling", action="append", default=[], metavar="MODALITY=cls|mean")
    parser.add_argument("--text-max-tokens", type=int, default=TEXT_MAX_TOKENS, metavar="N",
                        help=f"cut titles at N tokens for the text backbone (default {TEXT_MAX_TOKENS}, as the paper)")
    parser.add_argument("--cache-dir", type=Path, default=Path(".cache"))
    parser.add_argument("--allow-missing-media", action="store_true",
                        help="zero-fill the features of items whose cover or video is missing (counted)")


MEDIA_MODALITIES = ("image", "video", "audio")


def option_given(parser: argparse.ArgumentParser, args: argparse.Namespace, option: str) -> bool:
    """Whether `option` (its `args` name) was set to other than its default on the command line."""
    return getattr(args, option) != parser.get_default(option)


def check_data_options_apply(parser: argparse.ArgumentParser, args: argparse.Namespace,
                             modalities: tuple[str, ...], preset: str) -> None:
    """Stop with one line on a data or feature option that would change nothing for this data
    kind and these item `modalities` (`preset`'s), instead of dropping it without a word."""
    from crossan.zoo.models.config import MODALITIES

    given = functools.partial(option_given, parser, args)

    if args.data != "microlens":
        for option in ("cover_dir", "video_dir"):
            if given(option):
                raise ConfigError(f"--{option.replace('_', '-')} applies to --data microlens only "
                                  f"(this command reads --data {args.data})")
    for pair in (*args.backbone, *args.pooling):
        modality = pair.partition("=")[0]
        if modality in MODALITIES and modality not in modalities:
            raise ConfigError(f"{pair!r} names the {modality} backbone, which {preset} does not read "
                              f"(it reads {', '.join(modalities) or 'no backbone'})")
    if given("text_max_tokens") and "text" not in modalities:
        raise ConfigError(f"--text-max-tokens applies to the text backbone, which {preset} does not read")
    if args.allow_missing_media and not set(modalities) & set(MEDIA_MODALITIES):
        raise ConfigError(f"--allow-missing-media applies to covers and videos, which {preset} does not read")
    if given("backbones") and not modalities:
        raise ConfigError(f"--backbones chooses backbones, and {preset} reads none")


def data_and_settings(args: argparse.Namespace) -> tuple[Any, dict[str, Any], Any]:
    """The data set the `add_data_options` options name, its `config.json` description, and the
    feature settings; bad modality names or poolings are one line."""
    from crossan.zoo.backbones import POOLINGS
    from crossan.zoo.data import load_dataset
    from crossan.zoo.features.settings import FeatureSettings
    from crossan.zoo.models.config import MODALITIES
    from crossan.zoo.runs.pipeline import describe_data

    for pair in (*args.backbone, *args.pooling):
        modality = pair.partition("=")[0]
        if modality not in MODALITIES:
            raise ConfigError(f"unknown modality {modality!r} in {pair!r}; use one of {MODALITIES}")
    poolings = parse_assignments(args.pooling, "--pooling")
    bad = {p for p in poolings.values() if p not in POOLINGS}
    if bad:
        raise ConfigError(f"pooling must be one of {POOLINGS}, got {', '.join(sorted(bad))}")
    overrides = parse_assignments(args.backbone, "--backbone")
    settings = FeatureSettings(source=args.backbones, overrides=tuple(overrides.items()),
                               poolings=tuple(poolings.items()), text_max_tokens=args.text_max_tokens,
                               cache_dir=args.cache_dir, allow_missing_media=args.allow_missing_media)
    dataset = load_dataset(args.data, args.data_root, args.cache_dir, args.cover_dir, args.video_dir)
    return dataset, describe_data(args.data, dataset, args.cover_dir, args.video_dir), settings
