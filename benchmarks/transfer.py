"""Transfer benchmark: leave one catalogue out, train on the others together, measure on it.

    python benchmarks/transfer.py --data-root DIR1 DIR2 DIR3 [--seeds 42 43 44] [--json]
    python benchmarks/transfer.py --data-root DIR1 DIR2 DIR3 --left-out NAME --seeds 42

(DIR: data sets in one layout, `--data`, Amazon by default; docs/data.md describes it.)

For each catalogue left out in turn (all of them, or those `--left-out` names), the content
recipe (`crossan-t + prior, chosen on validation` of benchmarks/real_data.py) is trained on the
other catalogues at once (`OUT/without-<left out>/`), and on the left-out catalogue the report
gives, over the seeds, test HR/NDCG (masked; and on cold users, whose test item never occurs in
training) for:

- popularity, and the untrained text similarity of the same backbone (the frozen prior alone);
- zero-shot: the pretrained run ranking the left-out catalogue, nothing trained on it;
- fine-tuned: the content recipe trained on the left-out catalogue from the pretrained run's
  weights (`init_from`);
- from scratch: the content recipe and the `sasrec-id, cosine` recipe trained on it alone.

Beside them: the paired t-tests (fine-tuned against from scratch, zero-shot against the text
similarity), the epochs the fine-tuned run takes to reach the from-scratch run's best
validation NDCG@10 against the from-scratch run's best epoch (same seed), and, for each
catalogue the pretrained runs also trained on, their in-domain test NDCG@10 on it against the
run trained on it alone (when that catalogue is benchmarked in the same command), with the
latter's standard error. Every run is kept in OUT and resumed after a kill, as in real_data.py.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from real_data import (
    PRIOR_DECAY,
    RECIPES,
    SIMILARITY_ROW,
    TEXT_BACKBONE,
    TEXT_MAX_TOKENS,
    _paired_test,
    benchmark_table,
)
from rich.console import Console
from rich.table import Table

from crossan.zoo.cli.options import run_cli
from crossan.zoo.core.errors import ConfigError
from crossan.zoo.data import DATA_KINDS, load_dataset
from crossan.zoo.data.catalogues import combine_catalogues
from crossan.zoo.data.dataset import SequenceDataset
from crossan.zoo.experiments.definition import RunSpec, TableDefinition
from crossan.zoo.experiments.report import per_user_values
from crossan.zoo.experiments.runner import TableRuns, train_missing
from crossan.zoo.features.settings import FeatureSettings
from crossan.zoo.models.config import RecommenderConfig
from crossan.zoo.runs.pipeline import describe_data, resolve_device
from crossan.zoo.runs.zero_shot import open_zero_shot
from crossan.zoo.training.checkpoint import read_json
from crossan.zoo.training.evaluation import evaluate_history_similarity, evaluate_model, evaluate_popularity
from crossan.zoo.training.metrics import METRIC_NAMES, metrics_from_ranks
from crossan.zoo.training.significance import cold_item_users

CONTENT_ROW = "crossan-t + prior, chosen on validation"
ID_ROW = "sasrec-id, cosine"
ZERO_SHOT_ROW = "zero-shot"
FINE_TUNED_ROW = "fine-tuned"
SCRATCH_ROW = f"{RECIPES[CONTENT_ROW].preset}, from scratch"
ID_SCRATCH_ROW = f"{RECIPES[ID_ROW].preset}, from scratch"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="amazon", choices=DATA_KINDS)
    parser.add_argument(
        "--data-root", type=Path, nargs="+", required=True, metavar="DIR", help="two or more catalogues"
    )
    parser.add_argument(
        "--left-out", nargs="+", metavar="NAME", help="the catalogues to leave out in turn (default: every one)"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--epochs", type=int, default=50, help="maximum epochs per run (early stopping applies)")
    parser.add_argument("--patience", type=int, default=5)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--cache-dir", type=Path, default=Path(".cache"))
    parser.add_argument("--out", type=Path, help="folder for the runs (default weights/transfer-<data>)")
    parser.add_argument("--json", action="store_true", help="print one JSON object: left-out catalogue -> report")
    return parser


def main() -> int:
    args = build_parser().parse_args()
    console = Console(stderr=True)
    device = resolve_device(args.device)
    roots = list(dict.fromkeys(args.data_root))
    if len(roots) < 2:
        raise ConfigError("--data-root needs two catalogues or more: one is left out, the others are trained on")
    if args.data == "toy":
        raise ConfigError("--data toy is one generated catalogue; give microlens or amazon folders")
    datasets = {dataset.name: dataset for dataset in (load_dataset(args.data, root, args.cache_dir) for root in roots)}
    if len(datasets) != len(roots):
        raise ConfigError("--data-root: two catalogues share a name; each needs its own folder name")
    left_out = list(dict.fromkeys(args.left_out or datasets))
    unknown = [name for name in left_out if name not in datasets]
    if unknown:
        raise ConfigError(f"--left-out {', '.join(unknown)}: no such catalogue among {', '.join(datasets)}")
    out = args.out or Path("weights") / f"transfer-{args.data}"
    settings = FeatureSettings(
        cache_dir=args.cache_dir, text_max_tokens=TEXT_MAX_TOKENS, overrides=(("text", TEXT_BACKBONE),)
    )
    seeds = tuple(dict.fromkeys(args.seeds))
    reports = {name: leave_out(name, datasets, args, settings, seeds, out, device, console) for name in left_out}
    in_domain = in_domain_check(reports)
    if args.json:
        print(json.dumps({"left_out": reports, "in_domain": in_domain}))
        return 0
    print_report(reports, in_domain, seeds)
    return 0


def leave_out(
    target_name: str,
    datasets: dict[str, SequenceDataset],
    args: argparse.Namespace,
    settings: FeatureSettings,
    seeds: tuple[int, ...],
    out: Path,
    device: torch.device,
    console: Console,
) -> dict[str, Any]:
    """Every run of one left-out catalogue (pretrained on the others, fine-tuned, from scratch),
    trained or kept, and its report."""
    target = datasets[target_name]
    sources = combine_catalogues([dataset for name, dataset in datasets.items() if name != target_name])
    console.print(f"[bold]{target_name} left out[/bold]: pretraining on {sources.name}")
    recipe = RECIPES[CONTENT_ROW]
    content_options = {**recipe.train, **recipe.model}
    limits = {"epochs": args.epochs, "patience": args.patience}
    pretrained = TableRuns(
        TableDefinition(
            "pretrained", "pretrained", (RunSpec("pretrained", recipe.preset, content_options),), "pretrained", limits
        ),
        out / f"without-{target_name}",
        seeds,
    )
    train_missing(pretrained, sources, describe_data(args.data, sources), settings, {}, device, console)
    scratch = TableRuns(
        benchmark_table(RECIPES, [CONTENT_ROW, ID_ROW], args.epochs, args.patience), out / target_name, seeds
    )
    target_description = describe_data(args.data, target)
    train_missing(scratch, target, target_description, settings, {}, device, console)
    fine_tuned_dirs = {}
    for seed in seeds:
        source_run = pretrained.directory(pretrained.definition.runs[0], seed).resolve()
        spec = RunSpec(f"fine-tuned-from-seed{seed}", recipe.preset, {**content_options, "init_from": str(source_run)})
        table = TableRuns(
            TableDefinition("fine-tuned", "fine-tuned", (spec,), spec.name, limits), out / target_name, (seed,)
        )
        train_missing(table, target, target_description, settings, {}, device, console)
        fine_tuned_dirs[seed] = table.directory(spec, seed)

    cold = cold_item_users(target, "test")
    rows: dict[str, dict[str, Any]] = {}
    ranks: dict[str, list[list[int | None]]] = {}
    popularity = evaluate_popularity(target, "test")
    rows["popularity"] = {"test": popularity.metrics, "test_cold": metrics_from_ranks(popularity.ranks[cold])}
    ranks["popularity"] = [_rank_list(popularity.ranks)]
    zero_shot_seeds, frozen_text = [], None
    ranks[ZERO_SHOT_ROW] = []
    for seed in seeds:
        source_run = pretrained.directory(pretrained.definition.runs[0], seed)
        run = open_zero_shot(source_run, target, device, console, args.cache_dir)
        result = evaluate_model(run.model, target, run.features, "test")
        ranks[ZERO_SHOT_ROW].append(_rank_list(result.ranks))
        zero_shot_seeds.append({"test": result.metrics, "test_cold": metrics_from_ranks(result.ranks[cold])})
        if frozen_text is None:
            text = run.features.gather(torch.arange(target.num_items))[run.features.modalities.index("text")]
            frozen_text = text[:, -1].cpu()
    assert frozen_text is not None
    similarity = evaluate_history_similarity(target, frozen_text, "test", PRIOR_DECAY, RecommenderConfig.max_seq_len)
    rows[SIMILARITY_ROW] = {"test": similarity.metrics, "test_cold": metrics_from_ranks(similarity.ranks[cold])}
    ranks[SIMILARITY_ROW] = [_rank_list(similarity.ranks)]
    rows[ZERO_SHOT_ROW] = {
        key: {m: float(np.mean([s[key][m] for s in zero_shot_seeds])) for m in METRIC_NAMES}
        for key in ("test", "test_cold")
    } | {"test_ndcg10_per_seed": [s["test"]["NDCG@10"] for s in zero_shot_seeds]}
    trained = {
        FINE_TUNED_ROW: [fine_tuned_dirs[seed] for seed in seeds],
        SCRATCH_ROW: [scratch.directory(scratch.definition.runs[0], seed) for seed in seeds],
        ID_SCRATCH_ROW: [scratch.directory(scratch.definition.runs[1], seed) for seed in seeds],
    }
    for row, folders in trained.items():
        rows[row], ranks[row] = _trained_row(folders, cold)
    epochs = [
        _epochs_to_reach(fine_tuned, scratch_run)
        for fine_tuned, scratch_run in zip(trained[FINE_TUNED_ROW], trained[SCRATCH_ROW], strict=True)
    ]
    pretrained_metrics = [
        read_json(pretrained.directory(pretrained.definition.runs[0], seed) / "metrics.json") for seed in seeds
    ]
    return {
        "data": target_description,
        "pretrained_on": sources.name,
        "seeds": list(seeds),
        "cold_test_users": int(cold.sum()),
        "rows": rows,
        "paired_t_tests": {
            f"{FINE_TUNED_ROW} vs {SCRATCH_ROW}": _paired_test(ranks[FINE_TUNED_ROW], ranks[SCRATCH_ROW]),
            f"{ZERO_SHOT_ROW} vs {SIMILARITY_ROW}": _paired_test(ranks[ZERO_SHOT_ROW], ranks[SIMILARITY_ROW]),
        },
        "epochs_to_scratch_best": epochs,
        "scratch_ndcg10_standard_error": _standard_error(ranks[SCRATCH_ROW]),
        "pretrained_in_domain": _in_domain(pretrained_metrics, sources.name),
    }


def _in_domain(pretrained_metrics: list[dict[str, Any]], name: str) -> dict[str, list[float]]:
    """Per catalogue the pretrained runs trained on, their test NDCG@10 there, one per seed (a
    run over one catalogue reports it as its own test figure)."""
    if "catalogues" not in pretrained_metrics[0]:
        return {name: [metrics["test"]["NDCG@10"] for metrics in pretrained_metrics]}
    return {
        label: [metrics["catalogues"][label]["test"]["NDCG@10"] for metrics in pretrained_metrics]
        for label in pretrained_metrics[0]["catalogues"]
    }


def _rank_list(ranks: torch.Tensor) -> list[int | None]:
    """Ranks as per_user_test.json holds them (None: a miss, the target masked)."""
    return [None if math.isinf(r) else int(r) for r in ranks.tolist()]


def _trained_row(folders: list[Path], cold: torch.Tensor) -> tuple[dict[str, Any], list[list[int | None]]]:
    """A trained row's test metrics (all and cold users) and validation NDCG@10, means over seeds,
    with each seed's test NDCG@10 and best epoch; and each seed's per-user test ranks."""
    per_seed, ranks = [], []
    for folder in folders:
        metrics = read_json(folder / "metrics.json")
        seed_ranks = read_json(folder / "per_user_test.json")["ranks"]
        ranks.append(seed_ranks)
        test_ranks = torch.tensor([math.inf if r is None else float(r) for r in seed_ranks])
        per_seed.append((metrics, metrics_from_ranks(test_ranks[cold])))
    row = {
        "test": {m: float(np.mean([metrics["test"][m] for metrics, _ in per_seed])) for m in METRIC_NAMES},
        "test_cold": {m: float(np.mean([cold_metrics[m] for _, cold_metrics in per_seed])) for m in METRIC_NAMES},
        "valid_ndcg10": float(np.mean([metrics["valid"]["NDCG@10"] for metrics, _ in per_seed])),
        "test_ndcg10_per_seed": [metrics["test"]["NDCG@10"] for metrics, _ in per_seed],
        "best_epochs": [metrics["best_epoch"] for metrics, _ in per_seed],
    }
    return row, ranks


def _epochs_to_reach(fine_tuned: Path, scratch: Path) -> dict[str, Any]:
    """The first epoch whose validation NDCG@10 reaches the from-scratch run's best (None: never),
    beside the from-scratch run's best epoch. Both at the training prior weight, as training
    validates."""
    history = read_json(fine_tuned / "trainer_state.json")["history"]
    state = read_json(scratch / "trainer_state.json")
    goal = state["best_score"]
    reached = next((entry["epoch"] for entry in history if entry["valid"]["NDCG@10"] >= goal), None)
    return {"fine_tuned_epoch": reached, "scratch_best_epoch": state["best_epoch"], "scratch_best_valid": goal}


def _standard_error(rank_lists: list[list[int | None]]) -> float:
    """The standard error of the seed-averaged per-user test NDCG@10's mean."""
    values = per_user_values(rank_lists, "NDCG@10")
    return float(values.std(ddof=1) / math.sqrt(len(values)))


def in_domain_check(reports: dict[str, dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Per catalogue benchmarked here: every pretrained run that also trained on it, its mean test
    NDCG@10 there against the run trained on it alone, in standard errors of the latter."""
    checks: dict[str, list[dict[str, Any]]] = {}
    for left_out, report in reports.items():
        for catalogue, per_seed in report["pretrained_in_domain"].items():
            alone = reports.get(catalogue)
            if alone is None:
                continue
            single = alone["rows"][SCRATCH_ROW]["test"]["NDCG@10"]
            error = alone["scratch_ndcg10_standard_error"]
            together = float(np.mean(per_seed))
            checks.setdefault(catalogue, []).append(
                {
                    "pretrained_without": left_out,
                    "together_ndcg10": together,
                    "alone_ndcg10": single,
                    "alone_standard_error": error,
                    "difference_in_standard_errors": (together - single) / error,
                }
            )
    return checks


def print_report(reports: dict[str, dict[str, Any]], in_domain: dict[str, list[dict[str, Any]]], seeds: tuple) -> None:
    # Rich falls back to 80 columns when stdout is not a terminal, which would truncate the table.
    console = Console(width=None if sys.stdout.isatty() else 170)
    for name, report in reports.items():
        table = Table(
            title=f"{name} left out (pretrained on {report['pretrained_on']}): test split, masked full ranking, "
            f"mean over seeds {', '.join(map(str, seeds))}; {report['cold_test_users']} cold users"
        )
        for column in ("row", *METRIC_NAMES, "cold users NDCG@10", "vs text similarity"):
            table.add_column(column, justify="left" if column == "row" else "right")
        similarity = report["rows"][SIMILARITY_ROW]["test"]["NDCG@10"]
        for row, result in report["rows"].items():
            table.add_row(
                row,
                *(f"{result['test'][m]:.4f}" for m in METRIC_NAMES),
                f"{result['test_cold']['NDCG@10']:.4f}" if report["cold_test_users"] else "-",
                f"{result['test']['NDCG@10'] / similarity:.2f}x",
            )
        console.print(table)
        for pair, values in report["paired_t_tests"].items():
            console.print(
                f"{pair}: NDCG@10 {values['NDCG@10']['mean_difference']:+.4f} (paired t-test p = "
                f"{values['NDCG@10']['p_value']:.2g})"
            )
        for seed, epochs in zip(seeds, report["epochs_to_scratch_best"], strict=True):
            reached = epochs["fine_tuned_epoch"]
            console.print(
                f"seed {seed}: the from-scratch run's best validation NDCG@10 ({epochs['scratch_best_valid']:.4f}, "
                f"its epoch {epochs['scratch_best_epoch']}) is "
                + (
                    f"reached by the fine-tuned run at epoch {reached}"
                    if reached
                    else "not reached by the fine-tuned run"
                )
            )
    if in_domain:
        table = Table(title="in-domain: test NDCG@10 of the run trained with other catalogues against the run alone")
        for column in ("catalogue", "pretrained without", "together", "alone", "difference / SE"):
            table.add_column(column, justify="left" if column in ("catalogue", "pretrained without") else "right")
        for catalogue, checks in in_domain.items():
            for check in checks:
                table.add_row(
                    catalogue,
                    check["pretrained_without"],
                    f"{check['together_ndcg10']:.4f}",
                    f"{check['alone_ndcg10']:.4f} ± {check['alone_standard_error']:.4f}",
                    f"{check['difference_in_standard_errors']:+.2f}",
                )
        console.print(table)


if __name__ == "__main__":
    run_cli(main)
