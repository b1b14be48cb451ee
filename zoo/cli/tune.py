"""Tune a preset on a data set's validation split with Optuna, then write its best recipe.

    crossan tune --preset sasrec-id --data amazon --data-root DIR --trials 24
    crossan tune --preset crossan-t --data amazon --data-root DIR --backbone text=minilm \\
        --trials 24 --timeout 600 --study weights/tune/crossan-t-scientific
    python train.py --recipe weights/tune/crossan-t-scientific/best-recipe.json --data amazon ...
    crossan tune --preset crossan-t --data amazon --data-root DIR2 --trials 16 \
        --warm-start weights/tune/crossan-t-scientific/best-recipe.json --search-valid-users 5000

Rerunning the same command continues the study: finished trials are kept, a killed trial is
retried (and its run folder resumed) once its heartbeat is older than twice --heartbeat. A study
belongs to one preset, data set, search space, set of --set values and backbones: rerun with any
other, it stops with one line naming what differs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console

from crossan.zoo.cli.options import (
    add_data_options,
    add_device_option,
    add_json_option,
    check_data_options_apply,
    data_and_settings,
    parse_settings,
)
from crossan.zoo.core.errors import ConfigError
from crossan.zoo.models import list_models, preset_config
from crossan.zoo.runs.pipeline import resolve_device
from crossan.zoo.runs.settings import split_options
from crossan.zoo.tune.recipe import read_recipe
from crossan.zoo.tune.report import write_outputs
from crossan.zoo.tune.space import default_space, load_space
from crossan.zoo.tune.study import PRUNERS, StudySettings, run_study


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The options of `crossan tune`."""
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", required=True, choices=list_models(), metavar="NAME")
    parser.add_argument("--space", type=Path, help="search space file (default: the one shipped for the preset)")
    parser.add_argument("--trials", type=int, default=24, help="finished trials to reach, pruned ones included")
    parser.add_argument("--timeout", type=float, metavar="MINUTES", help="stop starting trials after this long")
    parser.add_argument(
        "--study",
        type=Path,
        metavar="DIR",
        help="study folder (default: weights/tune/<preset>-<data>): trials, study.db, report",
    )
    parser.add_argument("--storage", metavar="URL", help="Optuna storage URL (default: sqlite in the study folder)")
    parser.add_argument(
        "--pruner",
        default="median",
        choices=PRUNERS,
        help="median (default), halving (successive halving) or hyperband (brackets of halving up to the epochs)",
    )
    parser.add_argument("--seed", type=int, default=0, help="the sampler's seed")
    parser.add_argument(
        "--heartbeat",
        type=int,
        default=60,
        metavar="SECONDS",
        help="a trial's heartbeat; one silent for twice this long is retried",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a config value every trial uses, over the space (e.g. --set epochs=10)",
    )
    parser.add_argument(
        "--warm-start",
        nargs="+",
        type=Path,
        default=[],
        metavar="RECIPE.json",
        help="best-recipe.json files whose values of the space's parameters a new study tries first",
    )
    parser.add_argument(
        "--search-valid-users",
        type=int,
        default=0,
        metavar="N",
        help="validate every trial on a fixed sample of N users (0: all), then rank the best trials on all",
    )
    parser.add_argument(
        "--final-candidates",
        type=int,
        metavar="K",
        help="with --search-valid-users: how many of the best trials to rank again on the whole validation split "
        "(default 3)",
    )
    add_device_option(parser)
    add_json_option(parser, "the summary as JSON")
    add_data_options(parser)
    return parser


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """The command line (`argv`, or the process's arguments); returns the exit status."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    if args.final_candidates is not None and not args.search_valid_users:
        raise ConfigError(
            "--final-candidates needs --search-valid-users: without a sample, every trial is already ranked on "
            "every user"
        )
    console = Console(stderr=True)
    space = load_space(args.space or default_space(args.preset), args.preset)
    overrides = tuple(parse_settings(args.set, "--set").items())
    warm_start = tuple(read_recipe(path)[1] for path in args.warm_start)
    settings = StudySettings(
        args.preset,
        space,
        args.trials,
        args.study or Path("weights") / "tune" / f"{args.preset}-{args.data}",
        args.storage,
        args.timeout,
        args.pruner,
        args.seed,
        args.heartbeat,
        overrides,
        warm_start=warm_start,
        warm_start_files=tuple(str(path) for path in args.warm_start),
        search_valid_users=args.search_valid_users,
        final_candidates=3 if args.final_candidates is None else args.final_candidates,
    )
    modalities = preset_config(args.preset, **split_options(dict(overrides))[1]).backbone_modalities()
    check_data_options_apply(parser, args, modalities, args.preset)
    dataset, description, features = data_and_settings(args)
    device = resolve_device(args.device)
    study = run_study(settings, dataset, description, features, device, console)
    summary = write_outputs(study, settings, device)
    if args.json:
        print(json.dumps(summary))
    else:
        picked = (
            f" (picked on the whole validation split among {len(summary['final_candidates'])} trials; "
            f"best on the sample: trial {summary['optuna_best_trial']})"
            if "final_pick" in summary
            else ""
        )
        console.print(
            f"best trial {summary['best_trial']}: valid NDCG@10 {summary['valid NDCG@10']:.4f}{picked}; "
            f"recipe {settings.study_dir / 'best-recipe.json'}, report {settings.study_dir / 'report.md'}"
        )
    return 0
