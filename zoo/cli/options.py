"""Shared command-line plumbing: the options several commands take (defined once here), one-line
errors, `KEY=VALUE` options, the metrics table.

Importing this module loads no PyTorch: an adder imports what its choices need when a parser is
built, so a command whose options need none answers `--help` without it."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import sys
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.table import Table

from crossan.zoo.core.errors import ConfigError, UserError

__all__ = [
    "TRAIN_OPTIONS",
    "add_backbone_options",
    "add_data_options",
    "add_data_set_options",
    "add_device_option",
    "add_json_option",
    "add_train_options",
    "check_data_options_apply",
    "data_and_settings",
    "given_train_options",
    "metrics_table",
    "option_given",
    "parse_assignments",
    "parse_settings",
    "parse_value",
    "run_cli",
]

# The training config fields that are options of their own (`--batch-size` for batch_size); any
# other field is `--set KEY=VALUE`.
TRAIN_OPTIONS = ("epochs", "batch_size", "lr", "adapter_lr", "patience", "seed", "precision", "init_from")
DEVICES = ("auto", "cpu", "cuda")


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
    from crossan.zoo.training.metrics import METRIC_NAMES

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


def parse_settings(pairs: list[str], what: str) -> dict[str, Any]:
    """`KEY=VALUE` strings (`--set`, `--train`) -> {field: value}, each value parsed by `parse_value`."""
    return {key: parse_value(value) for key, value in parse_assignments(pairs, what).items()}


def add_data_set_options(
    parser: argparse.ArgumentParser,
    *,
    data_help: str | None = None,
    root_help: str = "data folder (toy: generated under the cache dir)",
    cache_help: str = "where toy data is generated and backbone features are cached",
    several_roots: bool = False,
) -> None:
    """--data, --data-root, --cache-dir: which data set, where it is, and the cache folder (every
    command that reads a data set; evaluate.py words their help for its two modes). With
    `several_roots`, --data-root repeats (a list, None when not given): one model over several
    catalogues."""
    from crossan.zoo.data import DATA_KINDS

    parser.add_argument("--data", default="toy", choices=DATA_KINDS, help=data_help)
    if several_roots:
        parser.add_argument(
            "--data-root",
            type=Path,
            action="append",
            metavar="DIR",
            help=f"{root_help}; repeat it to train one model on several catalogues of --data's layout at once "
            "(each batch's negatives, and every ranking, stay within one catalogue)",
        )
    else:
        parser.add_argument("--data-root", type=Path, help=root_help)
    parser.add_argument("--cache-dir", type=Path, default=Path(".cache"), help=cache_help)


def add_backbone_options(parser: argparse.ArgumentParser) -> None:
    """--backbones and --backbone: where the item features' backbones come from."""
    from crossan.zoo.backbones import SOURCES

    parser.add_argument(
        "--backbones",
        default="tiny",
        choices=SOURCES,
        help="tiny: random small models (tests, demo); pretrained: the paper's hub models",
    )
    parser.add_argument(
        "--backbone",
        action="append",
        default=[],
        metavar="MODALITY=ID_OR_DIR",
        help="per-modality backbone (hub id, local dir, or 'minilm' for text); repeatable",
    )


def add_data_options(parser: argparse.ArgumentParser) -> None:
    """The options that name a data set and how its item features are made (train.py, the tuner)."""
    from crossan.zoo.backbones import TEXT_MAX_TOKENS

    add_data_set_options(parser, several_roots=True)
    parser.add_argument("--cover-dir", default="covers", help="MicroLens cover folder, relative to --data-root")
    parser.add_argument("--video-dir", default="videos", help="MicroLens video folder, relative to --data-root")
    add_backbone_options(parser)
    parser.add_argument("--pooling", action="append", default=[], metavar="MODALITY=cls|mean")
    parser.add_argument(
        "--text-max-tokens",
        type=int,
        default=TEXT_MAX_TOKENS,
        metavar="N",
        help=f"cut titles at N tokens for the text backbone (default {TEXT_MAX_TOKENS}, as the paper)",
    )
    parser.add_argument(
        "--allow-missing-media",
        action="store_true",
        help="zero-fill the features of items whose cover or video is missing (counted)",
    )


def add_train_options(
    parser: argparse.ArgumentParser, names: tuple[str, ...] = TRAIN_OPTIONS, help_suffix: str = ""
) -> None:
    """One option per training config field of `names` (numbers or strings), typed and explained
    as `TrainConfig` declares the field; its default None means not given, so that the recipe's,
    the table's or the config's value stays."""
    from crossan.zoo.training.trainer import PRECISIONS, TrainConfig

    types = typing.get_type_hints(TrainConfig)
    helps = {field.name: field.metadata.get("help", "") for field in dataclasses.fields(TrainConfig)}
    choices = {"precision": PRECISIONS}
    for name in names:
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            type=types[name],
            choices=choices.get(name),
            help=(helps[name] + help_suffix).replace("%", "%%"),
        )


def given_train_options(args: argparse.Namespace) -> dict[str, Any]:
    """The `add_train_options` options given on the command line, as training config values."""
    return {name: getattr(args, name) for name in TRAIN_OPTIONS if getattr(args, name, None) is not None}


def add_device_option(
    parser: argparse.ArgumentParser, choices: tuple[str, ...] = DEVICES, default: str = "auto", help: str | None = None
) -> None:
    """--device: auto (CUDA when there is one), cpu or cuda, or fewer `choices`."""
    parser.add_argument("--device", default=default, choices=choices, help=help)


def add_json_option(parser: argparse.ArgumentParser, what: str) -> None:
    """--json: print `what` (the command's result, one JSON object) on stdout; logs stay on stderr."""
    parser.add_argument("--json", action="store_true", help=f"print {what} on stdout")


MEDIA_MODALITIES = ("image", "video", "audio")


def option_given(parser: argparse.ArgumentParser, args: argparse.Namespace, option: str) -> bool:
    """Whether `option` (its `args` name) was set to other than its default on the command line."""
    return getattr(args, option) != parser.get_default(option)


def check_data_options_apply(
    parser: argparse.ArgumentParser, args: argparse.Namespace, modalities: tuple[str, ...], preset: str
) -> None:
    """Stop with one line on a data or feature option that would change nothing for this data
    kind and these item `modalities` (`preset`'s), instead of dropping it without a word."""
    from crossan.zoo.models.config import MODALITIES

    given = functools.partial(option_given, parser, args)

    if args.data != "microlens":
        for option in ("cover_dir", "video_dir"):
            if given(option):
                raise ConfigError(
                    f"--{option.replace('_', '-')} applies to --data microlens only "
                    f"(this command reads --data {args.data})"
                )
    for pair in (*args.backbone, *args.pooling):
        modality = pair.partition("=")[0]
        if modality in MODALITIES and modality not in modalities:
            raise ConfigError(
                f"{pair!r} names the {modality} backbone, which {preset} does not read "
                f"(it reads {', '.join(modalities) or 'no backbone'})"
            )
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
    from crossan.zoo.data.catalogues import combine_catalogues
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
    settings = FeatureSettings(
        source=args.backbones,
        overrides=tuple(overrides.items()),
        poolings=tuple(poolings.items()),
        text_max_tokens=args.text_max_tokens,
        cache_dir=args.cache_dir,
        allow_missing_media=args.allow_missing_media,
    )
    roots = args.data_root or [None]
    if args.data == "toy" and len(roots) > 1:
        raise ConfigError("--data toy is one generated catalogue; several --data-root need --data microlens or amazon")
    dataset = combine_catalogues(
        [load_dataset(args.data, root, args.cache_dir, args.cover_dir, args.video_dir) for root in roots]
    )
    return dataset, describe_data(args.data, dataset, args.cover_dir, args.video_dir), settings
