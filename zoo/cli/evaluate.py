"""Evaluate a trained run (or the popularity baseline) with leave-one-out full ranking.

python evaluate.py --run weights/<run> [--split test] [--compare weights/<other>]
python evaluate.py --run weights/<run> --mutual-information --gate-heatmap gates.png
python evaluate.py --run weights/<run> --data amazon --data-root DIR   # a catalogue it never saw: zero-shot
python evaluate.py --data toy --baseline popularity
crossan evaluate --run weights/<run>                  # the same command, installed
"""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from crossan.zoo.cli.options import (
    add_data_set_options,
    add_device_option,
    add_json_option,
    metrics_table,
    option_given,
)
from crossan.zoo.core.errors import ConfigError

if TYPE_CHECKING:
    from crossan.zoo.analysis.mutual_information import MutualInformationEstimator
    from crossan.zoo.data import SequenceDataset
    from crossan.zoo.runs.run import Run
    from crossan.zoo.training.evaluation import EvaluationResult


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The options of `crossan evaluate` (and `python evaluate.py`)."""
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", type=Path, help="run directory written by train.py")
    source.add_argument("--baseline", choices=("popularity",), help="evaluate a baseline instead of a run")
    add_data_set_options(
        parser,
        data_help="with --baseline: its data set's kind; with --run: rank this data set (zero-shot "
        "when the run never trained on its catalogue: nothing is trained on it)",
        root_help="with --baseline or --data: its data folder; with --run alone: where the run's own "
        "data set is now (checked by fingerprint), when it moved",
        cache_help="with --baseline: where toy data is generated; with --run: where the run's "
        "feature cache is now, when it moved, or where --data's features are built (default: where "
        "the run recorded it)",
    )
    parser.add_argument("--split", default="test", choices=("valid", "test"))
    parser.add_argument("--no-mask-history", action="store_true", help="keep history items in the ranking")
    parser.add_argument("--compare", type=Path, help="second run: paired t-test on per-user metrics")
    add_device_option(parser, ("cpu", "cuda"), "cpu", help="where runs are evaluated")
    parser.add_argument(
        "--mutual-information",
        action="store_true",
        help="mutual information between every pair of towers' final side outputs (paper Table 1)",
    )
    parser.add_argument(
        "--mi-neighbours", type=int, default=3, metavar="K", help="with --mutual-information: k of the KSG estimator"
    )
    parser.add_argument(
        "--mi-components",
        type=int,
        default=8,
        metavar="D",
        help="with --mutual-information: PCA dimensions each tower's outputs are reduced to first (0: none)",
    )
    parser.add_argument(
        "--gate-heatmap",
        type=Path,
        metavar="PNG",
        help="draw every tower's gate weights per side layer and input (paper Fig. 4)",
    )
    add_json_option(parser, "one JSON object")
    return parser


def evaluate_run(run: Run, split: str, mask_history: bool) -> tuple[EvaluationResult, SequenceDataset]:
    """The run's full-ranking evaluation on `split`, and the data set it was evaluated on."""
    from crossan.zoo.training.evaluation import evaluate_model

    return evaluate_model(run.model, run.dataset, run.features, split, mask_history), run.dataset


def tower_mutual_information(run: Run, estimator: MutualInformationEstimator) -> dict[str, Any]:
    """MI between every pair of the run's towers over the whole catalogue, with the estimator named."""
    from crossan.zoo.analysis.mutual_information import pairwise_mutual_information

    outputs = run.model.eval().tower_representations(run.features.gather, run.features.num_items)
    if len(outputs) < 2:
        raise ConfigError(
            f"{run.directory}: {run.config['preset']} has {len(outputs)} tower(s); mutual information "
            "needs at least two"
        )
    pairs = pairwise_mutual_information(outputs, estimator)
    return {
        "estimator": estimator.describe(),
        "items": run.features.num_items,
        "pairs": pairs,
        "mean": sum(p["mutual_information"] for p in pairs) / len(pairs),
    }


def gate_heatmap(run: Run, path: Path) -> dict[str, object]:
    """Draw the run's gate heatmap to `path`; returns the numbers drawn."""
    from crossan.zoo.analysis.gate_heatmap import draw_gate_heatmap, gate_heatmap_data

    table = run.model.gate_table()
    if table is None:
        raise ConfigError(f"{run.directory}: {run.config['preset']} has no side-network gates to draw")
    data = gate_heatmap_data(*table)
    draw_gate_heatmap(data, path, title=f"{run.config['preset']} gates ({run.directory.name})")
    return {**data, "path": str(path)}


def check_options_apply(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """One line for an option that would change nothing in this mode (rather than being dropped)."""
    given = functools.partial(option_given, parser, args)

    if (args.mutual_information or args.gate_heatmap) and args.run is None:
        raise ConfigError("--mutual-information and --gate-heatmap analyse a run: give --run")
    if args.run is None and args.compare is None and given("device"):
        raise ConfigError("--device applies to runs (--run, --compare); popularity runs on the CPU")
    if not args.mutual_information:
        for option in ("mi_neighbours", "mi_components"):
            if given(option):
                raise ConfigError(f"--{option.replace('_', '-')} applies to --mutual-information only")


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """The command line (`argv`, or the process's arguments); returns the exit status."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    check_options_apply(parser, args)
    # Imported here, when the command runs, so that `--help` loads no PyTorch.
    from crossan.zoo.analysis.mutual_information import MutualInformationEstimator
    from crossan.zoo.data import load_dataset
    from crossan.zoo.runs.run import open_run
    from crossan.zoo.runs.zero_shot import open_run_on
    from crossan.zoo.training.evaluation import catalogue_metrics, evaluate_popularity
    from crossan.zoo.training.metrics import metrics_from_ranks
    from crossan.zoo.training.significance import cold_item_users, paired_t_test

    mask = not args.no_mask_history
    given_cache = args.cache_dir if option_given(parser, args, "cache_dir") else None
    other_data = load_dataset(args.data, args.data_root, args.cache_dir) if option_given(parser, args, "data") else None

    def open_evaluated(run_dir: Path) -> Run:
        """A run over the data set evaluated: `--data`'s (zero-shot if it never trained on it), or its own."""
        if other_data is None:
            return open_run(run_dir, args.device, args.data_root, given_cache, full_check=True)
        return open_run_on(run_dir, other_data, args.device, Console(stderr=True), given_cache)

    if args.run is not None:
        run = open_evaluated(args.run)
        result, dataset = evaluate_run(run, args.split, mask)
        label = args.run.name + (" (zero-shot)" if run.zero_shot else "")
    else:
        dataset = load_dataset(args.data, args.data_root, args.cache_dir)
        result, label = evaluate_popularity(dataset, args.split, mask), "popularity"
    cold = cold_item_users(dataset, args.split)
    report: dict[str, Any] = {
        "run": label,
        "split": args.split,
        "mask_history": mask,
        "num_users": dataset.num_users,
        "metrics": result.metrics,
        **({"zero_shot": run.zero_shot, "trained_on": run.config["data"].get("name")} if args.run is not None else {}),
        "cold_items": {
            "num_users": int(cold.sum()),
            "metrics": metrics_from_ranks(result.ranks[cold]) if cold.any() else None,
        },
    }
    rows = [(label + (f" (mean of {len(dataset.parts)} catalogues)" if dataset.parts else ""), result.metrics)]
    if dataset.parts:
        report["catalogues"] = catalogue_metrics(dataset, result.ranks, None)
        rows += [(f"{label}: {name}", metrics) for name, metrics in report["catalogues"].items()]
    if cold.any():
        rows.append((f"{label} (cold targets, {int(cold.sum())} users)", report["cold_items"]["metrics"]))
    if args.compare is not None:
        compared = open_evaluated(args.compare)
        other, other_dataset = evaluate_run(compared, args.split, mask)
        if other_dataset.user_ids != dataset.user_ids:
            raise ConfigError(f"{args.compare} was trained on different users; a paired test needs the same ones")
        report["compare"] = {
            "run": args.compare.name,
            "zero_shot": compared.zero_shot,
            "metrics": other.metrics,
            "paired_t_test": paired_t_test(result.ranks, other.ranks),
        }
        rows.append((args.compare.name + (" (zero-shot)" if compared.zero_shot else ""), other.metrics))
    if args.mutual_information:
        estimator = MutualInformationEstimator(neighbours=args.mi_neighbours, components=args.mi_components or None)
        report["mutual_information"] = tower_mutual_information(run, estimator)
    if args.gate_heatmap is not None:
        report["gate_heatmap"] = gate_heatmap(run, args.gate_heatmap)
    if args.json:
        print(json.dumps(report))
        return 0
    console = Console()
    if report.get("zero_shot") or report.get("compare", {}).get("zero_shot"):
        console.print(
            f"zero-shot: ranked with weights trained on another catalogue; nothing was trained on {dataset.name}"
        )
    console.print(
        metrics_table(
            f"{dataset.name}, {args.split} split, "
            f"{'masked' if mask else 'unmasked'} full ranking over "
            + (
                "each catalogue's items (" + ", ".join(f"{part.num_items:,}" for part in dataset.parts) + ")"
                if dataset.parts
                else f"{dataset.num_items:,} items"
            ),
            rows,
        )
    )
    if args.compare is not None:
        for name, values in report["compare"]["paired_t_test"].items():
            console.print(
                f"{name}: {label} - {args.compare.name} = {values['mean_difference']:+.4f} "
                f"(paired t-test p = {values['p_value']:.3g})"
            )
    if args.mutual_information:
        values = report["mutual_information"]
        described = values["estimator"]
        console.print(
            f"mutual information between towers over {values['items']:,} items, in {described['units']}: "
            f"{described['estimator']}, k = {described['neighbours']}, standardised, PCA to "
            f"{described['pca_components'] or 'no'} dimensions per tower"
        )
        console.print(mutual_information_table(values))
    if args.gate_heatmap is not None:
        console.print(f"gate heatmap written to {args.gate_heatmap}")
    return 0


def mutual_information_table(values: dict) -> Table:
    """The `--mutual-information` report as a table: one row per pair of towers, then the mean."""
    table = Table()
    table.add_column("towers")
    table.add_column("MI (nats)", justify="right")
    for pair in values["pairs"]:
        table.add_row(f"{pair['first']} - {pair['second']}", f"{pair['mutual_information']:.4f}")
    table.add_row("mean", f"{values['mean']:.4f}")
    return table
