"""Train a zoo model on cached backbone features and report validation and test metrics.

    python train.py --preset crossan-tiva                 # embedded toy data, tiny backbones
    crossan train --preset crossan-tiva                   # the same, as the installed command
    python train.py --recipe weights/tune/<study>/best-recipe.json   # a tuned recipe
    python train.py --resume weights/<run>                # continue a killed run
    torchrun --nproc-per-node 2 train.py --preset crossan-tiva   # data-parallel over 2 processes
    python train.py --preset crossan-t --data amazon --data-root DIR \\
        --backbone text=minilm
    python train.py --preset crossan-t --data amazon --data-root DIR1 --data-root DIR2 \\
        --backbone text=minilm                            # one model over two catalogues
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from crossan.zoo.cli.options import (
    add_data_options,
    add_device_option,
    add_json_option,
    add_train_options,
    check_data_options_apply,
    data_and_settings,
    given_train_options,
    metrics_table,
    option_given,
    parse_settings,
)
from crossan.zoo.core.distributed import Processes, launched
from crossan.zoo.core.errors import ConfigError
from crossan.zoo.models import list_models, preset_config
from crossan.zoo.runs.pipeline import resolve_device, resume_run, train_and_save
from crossan.zoo.runs.run import finished_run_config
from crossan.zoo.runs.settings import split_options
from crossan.zoo.training.checkpoint import read_json
from crossan.zoo.training.trainer import TrainConfig
from crossan.zoo.tune.recipe import read_recipe, recipe_origin


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The options of `crossan train` (and `python train.py`)."""
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    start = parser.add_mutually_exclusive_group(required=True)
    start.add_argument(
        "--preset", choices=list_models(), metavar="NAME", help=f"model preset: {', '.join(list_models())}"
    )
    start.add_argument(
        "--recipe",
        type=Path,
        metavar="FILE",
        help="a recipe file (from crossan tune): its preset and values; --set and the options above override them",
    )
    start.add_argument(
        "--resume",
        type=Path,
        metavar="RUN_DIR",
        help="continue a killed run from its last checkpoint; everything comes from RUN_DIR",
    )
    add_data_options(parser)
    add_train_options(parser)
    add_device_option(parser)
    parser.add_argument(
        "--run-dir",
        type=Path,
        help="a new or empty folder (default: weights/<preset>-<data>-<time>); a folder holding "
        "a run stops the command: --resume continues that run, --overwrite replaces it",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="with --run-dir: delete the run already in that folder and train a new one there",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any model or training config field, e.g. --set adapter_dim=256",
    )
    parser.add_argument(
        "--no-mask-history",
        action="store_true",
        help="keep history items in the ranking (data with repeat consumption)",
    )
    add_json_option(parser, "metrics.json")
    return parser


def command_values(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """The training and model config values the command line gives: the training options,
    --no-mask-history, and the --set pairs (parsed here, once), which win over the options."""
    train_values = given_train_options(args)
    if args.no_mask_history:
        train_values["mask_history"] = False
    set_train, model_values = split_options(parse_settings(args.set, "--set"))
    train_values = {**train_values, **set_train}
    if train_values.get("init_from"):
        # Absolute, so that the run resumes from any working directory; checked before any data is read.
        source = Path(train_values["init_from"]).resolve()
        finished_run_config(source)
        train_values["init_from"] = str(source)
    return train_values, model_values


def split_overrides(
    args: argparse.Namespace, train_values: dict[str, Any], model_values: dict[str, Any]
) -> tuple[TrainConfig, dict[str, Any]]:
    """The training config and model-config overrides of a new run: the command line's values
    (`command_values`) over the recipe's."""
    recipe_train, recipe_model = split_options({} if args.recipe is None else read_recipe(args.recipe)[1])
    model_values = {**recipe_model, **model_values}
    preset_config(args.preset, **model_values)  # validates model field names and values early
    return TrainConfig(**{**recipe_train, **train_values}), model_values


def given_options(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    train_values: dict[str, Any],
    model_values: dict[str, Any],
) -> dict[str, Any]:
    """Options set on the command line next to --resume, as `config.json` keys (`train.epochs`, ...)."""
    given = {f"train.{key}": value for key, value in train_values.items()}
    given.update({f"model.{key}": value for key, value in model_values.items()})
    for option, key in (
        ("data", "data.kind"),
        ("text_max_tokens", "feature_settings.text_max_tokens"),
        ("backbones", "feature_settings.source"),
        ("allow_missing_media", "feature_settings.allow_missing_media"),
    ):
        if option_given(parser, args, option):
            given[key] = getattr(args, option)
    if args.data_root is not None:
        if len(args.data_root) > 1:
            raise ConfigError("--resume finds the run's catalogues where it recorded them; give no --data-root")
        given["data.root"] = str(args.data_root[0].resolve())
    for option in ("backbone", "pooling", "run_dir", "cache_dir", "cover_dir", "video_dir", "overwrite"):
        if option_given(parser, args, option):
            raise ConfigError(f"--resume takes the run's own settings; --{option.replace('_', '-')} cannot change them")
    return given


def resume(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    values: tuple[dict, dict],
    console: Console,
    device: torch.device,
    processes: Processes,
) -> int:
    """`--resume RUN_DIR`: continue a killed run (or say that it finished)."""
    _, metrics, _ = resume_run(args.resume, device, console, given_options(parser, args, *values), processes)
    report(args, metrics, args.resume, processes)
    return 0


def report(args: argparse.Namespace, metrics: dict, run_dir: Path, processes: Processes) -> None:
    """metrics.json on stdout (--json) or the metrics table, from the main process."""
    if not processes.is_main:
        return
    if args.json:
        print(json.dumps(metrics))
        return
    preset = read_json(run_dir / "config.json")["preset"]
    Console().print(
        metrics_table(
            f"{preset} (best epoch {metrics['best_epoch']}, {'masked' if metrics['mask_history'] else 'unmasked'} "
            f"full ranking{'; valid and test: the mean of the catalogues' if 'catalogues' in metrics else ''})",
            [
                (f"{preset} valid", metrics["valid"]),
                (f"{preset} test", metrics["test"]),
                ("popularity test", metrics["popularity"]["test"]),
                *(
                    row
                    for name, each in metrics.get("catalogues", {}).items()
                    for row in (
                        (f"{preset} test: {name}", each["test"]),
                        (f"popularity test: {name}", each["popularity"]["test"]),
                    )
                ),
            ],
        )
    )


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """The command line (`argv`, or the process's arguments); returns the exit status."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    values = command_values(args)
    # Under torchrun: one process group for the whole command (a plain single process otherwise).
    with launched(resolve_device(args.device)) as (processes, device):
        console = Console(stderr=True, quiet=not processes.is_main)
        if args.resume is not None:
            return resume(parser, args, values, console, device, processes)
        return train(parser, args, values, console, device, processes)


def train(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    values: tuple[dict, dict],
    console: Console,
    device: torch.device,
    processes: Processes,
) -> int:
    """`--preset NAME`: a new run."""
    if args.recipe is not None:
        args.preset = read_recipe(args.recipe)[0]
        console.print(recipe_origin(args.recipe))
    train_config, model_overrides = split_overrides(args, *values)
    if args.overwrite and args.run_dir is None:
        raise ConfigError("--overwrite replaces the run in --run-dir: give --run-dir")
    modalities = preset_config(args.preset, **model_overrides).backbone_modalities()
    check_data_options_apply(parser, args, modalities, args.preset)
    started = time.perf_counter()
    dataset, data_description, settings = data_and_settings(args)
    console.print(dataset.summary())
    # The main process's clock names the run folder for all processes.
    run_dir = Path(
        processes.broadcast_text(
            str(args.run_dir or Path("weights") / f"{args.preset}-{args.data}-{time.strftime('%Y%m%d-%H%M%S')}")
        )
    )
    _, metrics, _ = train_and_save(
        args.preset,
        dataset,
        data_description,
        settings,
        train_config,
        model_overrides,
        run_dir,
        device,
        console,
        processes,
        overwrite=args.overwrite,
    )
    report(args, metrics, run_dir, processes)
    console.print(f"run saved to {run_dir} ({time.perf_counter() - started:.0f}s in all)")
    return 0
