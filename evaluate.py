"""Evaluate a trained run (or the popularity baseline) with leave-one-out full ranking.

    python evaluate.py --run weights/<run> [--split test] [--compare weights/<other>]
    python evaluate.py --data toy --baseline popularity
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console

from zoo.cli import metrics_table, run_cli
from zoo.data import DATA_KINDS, SequenceDataset, load_dataset
from zoo.errors import ConfigError
from zoo.runs import open_run
from zoo.training.evaluation import EvaluationResult, evaluate_model, evaluate_popularity
from zoo.training.metrics import metrics_from_ranks
from zoo.training.significance import cold_item_users, paired_t_test


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", type=Path, help="run directory written by train.py")
    source.add_argument("--baseline", choices=("popularity",), help="evaluate a baseline instead of a run")
    parser.add_argument("--data", default="toy", choices=DATA_KINDS, help="data set of --baseline")
    parser.add_argument("--data-root", type=Path)
    parser.add_argument("--cache-dir", type=Path, default=Path(".cache"))
    parser.add_argument("--split", default="test", choices=("valid", "test"))
    parser.add_argument("--no-mask-history", action="store_true", help="keep history items in the ranking")
    parser.add_argument("--compare", type=Path, help="second run: paired t-test on per-user metrics")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    return parser


def evaluate_run(run_dir: Path, split: str, mask_history: bool,
                 device: str) -> tuple[EvaluationResult, SequenceDataset]:
    run = open_run(run_dir, device)
    return evaluate_model(run.model, run.dataset, run.features, split, mask_history), run.dataset


def main() -> int:
    args = build_parser().parse_args()
    mask = not args.no_mask_history
    if args.run is not None:
        result, dataset = evaluate_run(args.run, args.split, mask, args.device)
        label = args.run.name
    else:
        dataset = load_dataset(args.data, args.data_root, args.cache_dir)
        result, label = evaluate_popularity(dataset, args.split, mask), "popularity"
    cold = cold_item_users(dataset, args.split)
    report: dict[str, object] = {
        "run": label, "split": args.split, "mask_history": mask, "num_users": dataset.num_users,
        "metrics": result.metrics,
        "cold_items": {"num_users": int(cold.sum()),
                       "metrics": metrics_from_ranks(result.ranks[cold]) if cold.any() else None},
    }
    rows = [(label, result.metrics)]
    if cold.any():
        rows.append((f"{label} (cold targets, {int(cold.sum())} users)", report["cold_items"]["metrics"]))
    if args.compare is not None:
        other, other_dataset = evaluate_run(args.compare, args.split, mask, args.device)
        if other_dataset.user_ids != dataset.user_ids:
            raise ConfigError(f"{args.compare} was trained on different users; a paired test needs the same ones")
        report["compare"] = {"run": args.compare.name, "metrics": other.metrics,
                             "paired_t_test": paired_t_test(result.ranks, other.ranks)}
        rows.append((args.compare.name, other.metrics))
    if args.json:
        print(json.dumps(report))
        return 0
    console = Console()
    console.print(metrics_table(f"{dataset.name}, {args.split} split, "
                                f"{'masked' if mask else 'unmasked'} full ranking over {dataset.num_items:,} items",
                                rows))
    if args.compare is not None:
        for name, values in report["compare"]["paired_t_test"].items():
            console.print(f"{name}: {label} - {args.compare.name} = {values['mean_difference']:+.4f} "
                          f"(paired t-test p = {values['p_value']:.3g})")
    return 0


if __name__ == "__main__":
    run_cli(main)
