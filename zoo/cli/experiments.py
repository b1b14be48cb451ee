"""Train (only what is missing) and summarise one of the paper's experiment tables.

    crossan experiments fusion --data toy --seeds 42 43 44
    crossan experiments modalities --data microlens --data-root DIR --backbones pretrained
    crossan experiments my-table.toml --data toy --out experiments/
    crossan experiments uncached --data toy --seeds 42 43 --epochs 10 --train steps_per_epoch=16

Writes `OUT/TABLE/<run>-seed<N>/` (one run folder each, as train.py does), then `TABLE.md`,
`TABLE.json` and, for sweeps, `TABLE.png` in `OUT/TABLE/`. Finished runs are kept and unfinished
ones resumed, so an interrupted table continues where it stopped. Several copies of the command
on one machine share a table: each trains the runs the others have not claimed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console

from crossan.zoo.cli.options import (
    add_backbone_options,
    add_data_set_options,
    add_device_option,
    add_json_option,
    add_train_options,
    given_train_options,
    parse_assignments,
    parse_settings,
)
from crossan.zoo.core.errors import ConfigError
from crossan.zoo.data import load_dataset
from crossan.zoo.experiments.definition import builtin_tables, load_table
from crossan.zoo.experiments.report import write_report
from crossan.zoo.experiments.runner import TableRuns, train_missing
from crossan.zoo.features.settings import FeatureSettings
from crossan.zoo.runs.pipeline import describe_data, resolve_device
from crossan.zoo.runs.settings import split_options
from crossan.zoo.training.trainer import TrainConfig


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The options of `crossan experiments`."""
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("table", help=f"a built-in table ({', '.join(builtin_tables())}) or a .toml/.json file")
    add_data_set_options(parser)
    add_backbone_options(parser)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    add_train_options(parser, ("epochs",), help_suffix=" of every run, over the table's")
    parser.add_argument(
        "--train",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a training config field for every run, e.g. --train steps_per_epoch=20 "
        "(a fixed step budget); model fields belong to the table's runs",
    )
    parser.add_argument("--out", type=Path, default=Path("experiments"))
    add_device_option(parser)
    add_json_option(parser, "TABLE.json")
    return parser


def training_overrides(args: argparse.Namespace) -> dict[str, object]:
    """`--epochs` and `--train` as training config values; a model field is an error."""
    train_values, model_values = split_options(parse_settings(args.train, "--train"))
    if model_values:
        raise ConfigError(
            f"--train takes training config fields; {', '.join(sorted(model_values))} "
            "are model fields: set them in the table's runs"
        )
    if "seed" in train_values:
        raise ConfigError("--train seed: seeds come from --seeds")
    train_values.update(given_train_options(args))
    TrainConfig(**train_values)  # validates names and values before any run starts
    return train_values


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """The command line (`argv`, or the process's arguments); returns the exit status."""
    args = build_parser(prog).parse_args(argv)
    definition = load_table(args.table)
    console = Console(stderr=True)
    table = TableRuns(definition, args.out, tuple(dict.fromkeys(args.seeds)))
    overrides = training_overrides(args)
    dataset = load_dataset(args.data, args.data_root, args.cache_dir)
    settings = FeatureSettings(
        source=args.backbones,
        overrides=tuple(parse_assignments(args.backbone, "--backbone").items()),
        cache_dir=args.cache_dir,
    )
    done = train_missing(
        table, dataset, describe_data(args.data, dataset), settings, overrides, resolve_device(args.device), console
    )
    summary = write_report(table)
    counts = {what: list(done.values()).count(what) for what in ("trained", "resumed", "kept")}
    console.print(
        f"{definition.name}: {counts['trained']} trained, {counts['resumed']} resumed, "
        f"{counts['kept']} kept -> {table.folder / (definition.name + '.md')}"
    )
    if args.json:
        print(json.dumps(summary))
    else:
        print((table.folder / f"{definition.name}.md").read_text(), end="")
    return 0
