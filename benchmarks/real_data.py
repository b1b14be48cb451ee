"""Benchmark on real data sets: popularity, `sasrec-id` and `crossan-t` over a pretrained MiniLM,
each with its own recipe, over several seeds.

    python benchmarks/real_data.py --data-root DIR --seeds 42 43 44 [--json]
    python benchmarks/real_data.py --data-root DIR --models sasrec-id crossan-t --seeds 42
    python benchmarks/real_data.py --data-root DIR --models sasrec-id crossan-t --tune 24 --seeds 42 43 44
    python benchmarks/real_data.py --data-root DIR1 DIR2 DIR3 --models sasrec-id crossan-t --tune 24

(DIR: a data set in the Amazon layout, such as Amazon Scientific; docs/data.md describes it.)

With several data roots each catalogue is benchmarked as one would be alone, in `OUT/<its name>/`,
one after the other, and a last table compares them: per catalogue, the content row with the
best mean validation NDCG@10 against the reference (below), their test NDCG@10, ratio and paired
t-test, the content row's unmasked and cold-user figures beside the untrained text similarity's
and popularity's, and the geometric mean of the ratios. With `--tune`, a family's study on a
later catalogue starts from the best values of the catalogues tuned before it (enqueued as its
first trials, inside the same budget). `--json` then prints `{"catalogues": {name: details},
"summary": ...}`.

With `--tune TRIALS`, every model family (preset) among the chosen rows is first tuned on the
data set's validation split with the same budget (`crossan tune`: TRIALS finished
trials each, `--tune-timeout` minutes at most each), and its best recipe becomes one more row,
`<preset>, tuned`, trained over the seeds like the others; the report adds each family's budget
spent and its chosen recipe. With `--tune-only` the command tunes and stops: started beside a
running benchmark with the same arguments, it is a second worker on the same studies (each
study is an SQLite file under OUT/tune/), and the benchmark finds them finished.

Every row is a recipe (`RECIPES`: a preset, training settings, model settings), trained once per
seed under the same protocol (leave-one-out, full ranking, history masked, test at the best
validation epoch). Runs live in `OUT/<row>-seed<N>/`: finished ones are kept and unfinished ones
resumed, so a long benchmark survives a kill. Two copies of the same command on one machine
share the work: each trains the runs the other has not claimed, then both print the report.
The tables give, per row, the mean over seeds of the test metrics (masked, unmasked, and on the
users whose test item never occurs in training), the validation NDCG@10 the recipes were chosen
on, seconds per training epoch, trainable parameters, the ratio to the reference row (the
`sasrec-id` recipe with the best mean validation NDCG@10, so that content models are compared
with the strongest ID baseline), and a paired t-test over users against it (per-user metrics
averaged over seeds).

Two rows train nothing: popularity, and, when a content row reads text, the text similarity of
the frozen backbone alone (the prior of `backbone_prior_weight`, without the learned part), which
shows what the content models add to their backbone.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from crossan.zoo.cli.options import run_cli
from crossan.zoo.core.errors import ConfigError
from crossan.zoo.data import DATA_KINDS, load_dataset
from crossan.zoo.data.dataset import SequenceDataset
from crossan.zoo.experiments.definition import RunSpec, TableDefinition
from crossan.zoo.experiments.report import per_user_values
from crossan.zoo.experiments.runner import TableRuns, train_missing
from crossan.zoo.features.settings import FeatureSettings
from crossan.zoo.models.config import RecommenderConfig, SideNetworkConfig
from crossan.zoo.runs.pipeline import describe_data, resolve_device
from crossan.zoo.runs.run import open_run
from crossan.zoo.runs.settings import split_options
from crossan.zoo.training.checkpoint import read_json
from crossan.zoo.training.evaluation import evaluate_history_similarity, evaluate_model, evaluate_popularity
from crossan.zoo.training.metrics import METRIC_NAMES, metrics_from_ranks
from crossan.zoo.training.significance import cold_item_users
from crossan.zoo.tune.report import write_outputs
from crossan.zoo.tune.space import default_space, load_space
from crossan.zoo.tune.study import PRUNERS, StudySettings, run_study

TEXT_BACKBONE = "minilm"
TEXT_MAX_TOKENS = 64  # 44% of Amazon Scientific's titles are longer than 30 tokens


@dataclass(frozen=True)
class Recipe:
    """How one row trains: a preset, training settings and model settings (TrainConfig and
    preset defaults otherwise)."""

    preset: str
    train: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)


# Both model families see every training prefix (sliding windows), as RecBole's SASRec does.
# crossan-t's adapter learning rate, title length, score temperature and prior weights (0.25 in
# training, 1 in ranking), and the ID term's dropout, were picked on Amazon Scientific's
# validation NDCG@10 (README, "Measured results"; extra sampled or remembered negatives did not
# hold a validation gain over seeds there); sasrec-id keeps RecBole's settings (lr 1e-3, dropout
# 0.5), with in-batch negatives, RecBole's full softmax, or the cosine scores that also lift it
# on validation. The dot-product rows are the paper's scoring; the other prior rows are steps of
# the sweep, kept for comparison: trained at 0.5 and ranked at 1, and ranked at the training
# weight (0.5, and 2, the runner-up on validation among the weights tried that way).
COSINE = {"score_temperature": 0.1}
SLIDING = {"sliding_windows": True}
CROSSAN_TRAINING = {**SLIDING, "adapter_lr": 1e-4}
ID_TERM = {"item_id_term": True, "item_id_dropout": 0.5}
PRIOR = {"backbone_prior_weight": 0.25, "backbone_prior_inference_weight": 1.0}
# The prior trained at 0.25, its ranking weight and its scale on cold items chosen on validation
# (the mean to within its standard error, then the cold users: crossan.zoo.training.selection).
PRIOR_ON_VALIDATION = {
    "backbone_prior_weight": 0.25,
    "backbone_prior_inference_weight": "auto",
    "backbone_prior_cold_scale": "auto",
}
RECIPES = {
    "sasrec-id": Recipe("sasrec-id", SLIDING),
    "sasrec-id, full softmax": Recipe("sasrec-id", {**SLIDING, "full_softmax": True}),
    "sasrec-id, cosine": Recipe("sasrec-id", SLIDING, COSINE),
    "crossan-t, dot product": Recipe("crossan-t", CROSSAN_TRAINING),
    "crossan-t + ID, dot product": Recipe("crossan-t", CROSSAN_TRAINING, ID_TERM),
    "crossan-t": Recipe("crossan-t", CROSSAN_TRAINING, COSINE),
    "crossan-t + ID": Recipe("crossan-t", CROSSAN_TRAINING, {**COSINE, **ID_TERM}),
    "crossan-t + prior": Recipe("crossan-t", CROSSAN_TRAINING, {**COSINE, **PRIOR}),
    "crossan-t + prior 0.5, ranked at 1": Recipe(
        "crossan-t", CROSSAN_TRAINING, {**COSINE, "backbone_prior_weight": 0.5, "backbone_prior_inference_weight": 1.0}
    ),
    "crossan-t + prior 0.5": Recipe("crossan-t", CROSSAN_TRAINING, {**COSINE, "backbone_prior_weight": 0.5}),
    "crossan-t + prior 2": Recipe("crossan-t", CROSSAN_TRAINING, {**COSINE, "backbone_prior_weight": 2.0}),
    "crossan-t + prior, chosen on validation": Recipe("crossan-t", CROSSAN_TRAINING, {**COSINE, **PRIOR_ON_VALIDATION}),
}
ID_PRESET = "sasrec-id"
SIMILARITY_ROW = "text similarity, untrained"
PRIOR_DECAY = PRIOR.get("backbone_prior_decay", SideNetworkConfig.backbone_prior_decay)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="amazon", choices=DATA_KINDS)
    parser.add_argument(
        "--data-root",
        type=Path,
        nargs="+",
        metavar="DIR",
        help="data folder (required unless --data toy); several: one benchmark each, then a summary over them",
    )
    parser.add_argument(
        "--models",
        nargs="+",
        default=list(RECIPES),
        choices=list(RECIPES),
        metavar="ROW",
        help=f"rows to train (default: all of {', '.join(RECIPES)})",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--epochs", type=int, default=50, help="maximum epochs per run (early stopping applies)")
    parser.add_argument("--patience", type=int, default=5)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--cache-dir", type=Path, default=Path(".cache"))
    parser.add_argument("--out", type=Path, help="folder for the runs (default weights/bench-<data>)")
    parser.add_argument(
        "--tune", type=int, metavar="TRIALS", help="tune every chosen family first, with this many finished trials each"
    )
    parser.add_argument("--tune-timeout", type=float, metavar="MINUTES", help="at most this long per family")
    parser.add_argument(
        "--tune-pruner", default="median", choices=PRUNERS, help="how the studies stop poor trials early"
    )
    parser.add_argument(
        "--tune-valid-users",
        type=int,
        default=0,
        metavar="N",
        help="trials validate on a fixed sample of N users; the best few are ranked again on every user (0: all)",
    )
    parser.add_argument(
        "--tune-only",
        action="store_true",
        help="tune and stop, without the seeded runs (a second worker beside the full command)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object: row -> mean test metrics")
    return parser


def benchmark_table(recipes: dict[str, Recipe], models: list[str], epochs: int, patience: int) -> TableDefinition:
    """The chosen rows as an experiment table (its runner keeps, resumes and trains runs)."""
    runs = tuple(RunSpec(name, recipes[name].preset, {**recipes[name].train, **recipes[name].model}) for name in models)
    return TableDefinition("real-data", "real data", runs, runs[0].name, {"epochs": epochs, "patience": patience})


def main() -> int:
    args = build_parser().parse_args()
    console = Console(stderr=True)
    device = resolve_device(args.device)
    models = list(dict.fromkeys(args.models))
    if not any(RECIPES[name].preset == ID_PRESET for name in models):
        raise ConfigError(f"--models needs a {ID_PRESET} row: the reference every row is compared with")
    if args.tune_only and args.tune is None:
        raise ConfigError("--tune-only needs --tune TRIALS")
    roots = list(dict.fromkeys(args.data_root)) if args.data_root else [None]
    datasets = [load_dataset(args.data, root, args.cache_dir) for root in roots]
    names = [dataset.name for dataset in datasets]
    if len(set(names)) != len(names):
        raise ConfigError(f"--data-root: two data sets share a name ({', '.join(names)}); each needs its own folder")
    out = args.out or Path("weights") / f"bench-{args.data}"
    warm_start: dict[str, list[dict[str, Any]]] = {}
    reports = {}
    for dataset in datasets:
        folder = out if len(datasets) == 1 else out / dataset.name
        reports[dataset.name] = benchmark_catalogue(dataset, args, models, folder, device, console, warm_start)
    wide = Console(width=None if sys.stdout.isatty() else 170)
    if args.tune_only:
        tuning = {name: report["tuning"] for name, report in reports.items()}
        if args.json:
            single = len(datasets) == 1
            print(json.dumps({"tuning": next(iter(tuning.values()))} if single else {"catalogues": tuning}))
        else:
            for name, report in reports.items():
                print_budget(report["tuning"], name, wide)
        return 0
    if len(datasets) == 1:
        (report,) = reports.values()
        if args.json:
            print(json.dumps(row_metrics(report) | {"details": report}))
        else:
            print_tables(report, datasets[0].name)
        return 0
    summary = summarise(reports)
    if args.json:
        print(json.dumps({"catalogues": reports, "summary": summary}))
        return 0
    for name, report in reports.items():
        print_tables(report, name)
    print_summary(summary, wide)
    return 0


def row_metrics(report: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Row -> mean test metrics and seconds per epoch: the one-catalogue JSON's top level."""
    return {name: {**r["test"], "seconds_per_epoch": r["seconds_per_epoch"]} for name, r in report["rows"].items()}


def benchmark_catalogue(
    dataset: SequenceDataset,
    args: argparse.Namespace,
    models: list[str],
    out: Path,
    device: torch.device,
    console: Console,
    warm_start: dict[str, list[dict[str, Any]]],
) -> dict[str, Any]:
    """Tune (with `--tune`), train the rows over the seeds and report one catalogue; `warm_start`
    holds each family's best values on the catalogues tuned before, and gains this one's."""
    console.print(dataset.summary())
    data_description = describe_data(args.data, dataset)
    seeds = tuple(dict.fromkeys(args.seeds))
    settings = FeatureSettings(
        cache_dir=args.cache_dir, text_max_tokens=TEXT_MAX_TOKENS, overrides=(("text", TEXT_BACKBONE),)
    )
    recipes, tuning, models = dict(RECIPES), {}, list(models)
    if args.tune is not None:
        for preset in dict.fromkeys(RECIPES[name].preset for name in models):
            tuning[preset] = tune_family(
                preset, args, out, dataset, data_description, settings, device, console, warm_start.get(preset, [])
            )
            warm_start.setdefault(preset, []).append(tuning[preset]["recipe"])
            train_values, model_values = split_options(tuning[preset]["recipe"])
            recipes[f"{preset}, tuned"] = Recipe(preset, train_values, model_values)
            models.append(f"{preset}, tuned")
    if args.tune_only:
        return {"tuning": tuning}
    table = TableRuns(benchmark_table(recipes, models, args.epochs, args.patience), out, seeds)
    train_missing(table, dataset, data_description, settings, {}, device, console)

    cold = cold_item_users(dataset, "test")
    popularity = {mask: evaluate_popularity(dataset, "test", mask) for mask in (True, False)}
    results: dict[str, dict[str, Any]] = {
        "popularity": {
            "test": popularity[True].metrics,
            "test_unmasked": popularity[False].metrics,
            "test_cold": metrics_from_ranks(popularity[True].ranks[cold]),
            "valid_ndcg10": None,
            "seconds_per_epoch": 0.0,
            "trainable_parameters": 0,
            "seeds": 0,
        }
    }
    frozen_text: torch.Tensor | None = None
    ranks: dict[str, list[list[int | None]]] = {}
    for spec in table.definition.runs:
        per_seed = []
        ranks[spec.name] = []
        for seed in seeds:
            folder = table.directory(spec, seed)
            metrics, state = read_json(folder / "metrics.json"), read_json(folder / "trainer_state.json")
            run = open_run(folder, device)
            if frozen_text is None and "text" in run.features.modalities:
                text_states = run.features.gather(torch.arange(dataset.num_items))[
                    run.features.modalities.index("text")
                ]
                frozen_text = text_states[:, -1].cpu()
            unmasked = evaluate_model(run.model, dataset, run.features, "test", mask_history=False)
            seed_ranks = read_json(folder / "per_user_test.json")["ranks"]
            ranks[spec.name].append(seed_ranks)
            test_ranks = torch.tensor([math.inf if r is None else float(r) for r in seed_ranks])
            per_seed.append(
                {
                    "test": metrics["test"],
                    "test_unmasked": unmasked.metrics,
                    "test_cold": metrics_from_ranks(test_ranks[cold]),
                    "valid_ndcg10": metrics["valid"]["NDCG@10"],
                    "best_epoch": metrics["best_epoch"],
                    "seconds_per_epoch": float(np.mean([h["train_seconds"] for h in state["history"]])),
                    "trainable_parameters": metrics["trainable_parameters"],
                }
            )
        results[spec.name] = _mean_over_seeds(per_seed) | {"recipe": spec.options, "preset": spec.preset}
    if frozen_text is not None:
        results[SIMILARITY_ROW] = history_similarity_row(dataset, frozen_text, cold)
    reference = max(
        (name for name in models if recipes[name].preset == ID_PRESET), key=lambda name: results[name]["valid_ndcg10"]
    )
    comparisons = {name: _paired_test(ranks[name], ranks[reference]) for name in models if name != reference}
    return {
        "data": data_description,
        "seeds": list(seeds),
        "cold_test_users": int(cold.sum()),
        "reference": reference,
        "best_content": max(
            (name for name in models if recipes[name].preset != ID_PRESET),
            key=lambda name: results[name]["valid_ndcg10"],
            default=None,
        ),
        "rows": results,
        "paired_t_tests": comparisons,
        "text_backbone": TEXT_BACKBONE,
        "text_max_tokens": TEXT_MAX_TOKENS,
        "tuning": tuning,
    }


def summarise(reports: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per catalogue, the content row with the best mean validation NDCG@10 against the reference
    (the best `sasrec-id` row on validation): test NDCG@10 and their ratio, the paired t-test,
    unmasked and cold-user figures beside the untrained rows'; and the ratios' geometric mean."""
    catalogues: dict[str, dict[str, Any]] = {}
    for name, report in reports.items():
        rows, best, reference = report["rows"], report["best_content"], report["reference"]
        if best is None:
            raise ConfigError("the summary over catalogues needs a content row among --models")
        similarity = rows.get(SIMILARITY_ROW)
        catalogues[name] = {
            "reference": reference,
            "best_content": best,
            "reference_ndcg10": rows[reference]["test"]["NDCG@10"],
            "content_ndcg10": rows[best]["test"]["NDCG@10"],
            "ratio": rows[best]["test"]["NDCG@10"] / rows[reference]["test"]["NDCG@10"],
            "p_value": report["paired_t_tests"][best]["NDCG@10"]["p_value"],
            "content_unmasked_ndcg10": rows[best]["test_unmasked"]["NDCG@10"],
            "content_unmasked_hr10": rows[best]["test_unmasked"]["HR@10"],
            "content_cold_ndcg10": rows[best]["test_cold"]["NDCG@10"],
            "similarity_ndcg10": None if similarity is None else similarity["test"]["NDCG@10"],
            "similarity_cold_ndcg10": None if similarity is None else similarity["test_cold"]["NDCG@10"],
            "popularity_ndcg10": rows["popularity"]["test"]["NDCG@10"],
            "cold_test_users": report["cold_test_users"],
        }
    ratios = [entry["ratio"] for entry in catalogues.values()]
    return {"catalogues": catalogues, "geometric_mean_ratio": float(np.exp(np.mean(np.log(ratios))))}


def print_summary(summary: dict[str, Any], console: Console) -> None:
    """The catalogues side by side: the best content row on validation against the best ID row."""
    table = Table(
        title="over catalogues: the content row best on validation against the sasrec-id row best on validation "
        f"(test NDCG@10; geometric mean of the ratios {summary['geometric_mean_ratio']:.2f}x)"
    )
    columns = (
        "catalogue",
        "content row",
        "NDCG@10",
        "sasrec-id row",
        "NDCG@10",
        "ratio",
        "p",
        "unmasked NDCG@10",
        "unmasked HR@10",
        "cold users",
        "text similarity",
        "its cold users",
        "popularity",
    )
    for column in columns:
        table.add_column(column, justify="left" if column in ("catalogue", "content row", "sasrec-id row") else "right")

    def number(value: float | None) -> str:
        return "" if value is None else f"{value:.4f}"

    for name, entry in summary["catalogues"].items():
        table.add_row(
            name,
            entry["best_content"],
            number(entry["content_ndcg10"]),
            entry["reference"],
            number(entry["reference_ndcg10"]),
            f"{entry['ratio']:.2f}x",
            f"{entry['p_value']:.2g}",
            number(entry["content_unmasked_ndcg10"]),
            number(entry["content_unmasked_hr10"]),
            number(entry["content_cold_ndcg10"]),
            number(entry["similarity_ndcg10"]),
            number(entry["similarity_cold_ndcg10"]),
            number(entry["popularity_ndcg10"]),
        )
    console.print(table)


def tune_family(
    preset: str,
    args: argparse.Namespace,
    out: Path,
    dataset: SequenceDataset,
    data_description: dict[str, Any],
    settings: FeatureSettings,
    device: torch.device,
    console: Console,
    warm_start: list[dict[str, Any]],
) -> dict[str, Any]:
    """Tune `preset` on validation with the benchmark's budget (`--tune` finished trials, the
    benchmark's epochs and patience), its first trials the values best on the catalogues tuned
    before (`warm_start`); returns the study's summary with its best recipe and values."""
    space = load_space(default_space(preset), preset)
    study_settings = StudySettings(
        preset,
        space,
        args.tune,
        out / "tune" / preset,
        timeout_minutes=args.tune_timeout,
        pruner=args.tune_pruner,
        overrides=(("epochs", args.epochs), ("patience", args.patience)),
        warm_start=tuple(warm_start),
        search_valid_users=args.tune_valid_users,
    )
    console.print(
        f"tuning {preset}: {args.tune} trials on the validation split"
        + (f", the first {len(warm_start)} from the catalogues tuned before" if warm_start else "")
    )
    return write_outputs(
        run_study(study_settings, dataset, data_description, settings, device, console), study_settings, device
    )


def history_similarity_row(dataset: SequenceDataset, frozen_text: torch.Tensor, cold: torch.Tensor) -> dict[str, Any]:
    """The untrained text baseline: the frozen-similarity prior alone (the text backbone's last
    state of the history, decayed as the prior recipe's, against every item)."""
    length = RecommenderConfig.max_seq_len
    test = {
        mask: evaluate_history_similarity(dataset, frozen_text, "test", PRIOR_DECAY, length, mask)
        for mask in (True, False)
    }
    valid = evaluate_history_similarity(dataset, frozen_text, "valid", PRIOR_DECAY, length)
    return {
        "test": test[True].metrics,
        "test_unmasked": test[False].metrics,
        "test_cold": metrics_from_ranks(test[True].ranks[cold]),
        "valid_ndcg10": valid.metrics["NDCG@10"],
        "seconds_per_epoch": 0.0,
        "trainable_parameters": 0,
        "seeds": 0,
    }


def _mean_over_seeds(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """Metric dicts averaged over seeds (with the per-seed test NDCG@10 and best epochs kept)."""
    mean: dict[str, Any] = {}
    for key in ("test", "test_unmasked", "test_cold"):
        mean[key] = {m: float(np.mean([s[key][m] for s in per_seed])) for m in METRIC_NAMES}
    for key in ("valid_ndcg10", "seconds_per_epoch"):
        mean[key] = float(np.mean([s[key] for s in per_seed]))
    return mean | {
        "trainable_parameters": per_seed[0]["trainable_parameters"],
        "seeds": len(per_seed),
        "test_ndcg10_per_seed": [s["test"]["NDCG@10"] for s in per_seed],
        "best_epochs": [s["best_epoch"] for s in per_seed],
    }


def _paired_test(first: list[list[int | None]], second: list[list[int | None]]) -> dict[str, dict[str, float]]:
    """Per metric: mean difference and two-sided paired t-test p over users (seed-averaged)."""
    from scipy.stats import ttest_rel

    results = {}
    for metric in METRIC_NAMES:
        a, b = per_user_values(first, metric), per_user_values(second, metric)
        results[metric] = {"mean_difference": float(a.mean() - b.mean()), "p_value": float(ttest_rel(a, b).pvalue)}
    return results


def print_tables(report: dict[str, Any], name: str) -> None:
    # Rich falls back to 80 columns when stdout is not a terminal, which would truncate the table.
    console = Console(width=None if sys.stdout.isatty() else 170)
    rows, reference = report["rows"], report["reference"]
    seeds = ", ".join(map(str, report["seeds"]))
    table = Table(
        title=f"{name}: test split, masked full ranking, mean over seeds {seeds} (ratios and p to {reference})"
    )
    for column in (
        "row",
        *METRIC_NAMES,
        "valid NDCG@10",
        "s/epoch",
        "trainable params",
        "NDCG@10 ratio",
        "p (NDCG@10)",
    ):
        table.add_column(column, justify="left" if column == "row" else "right")
    for row, result in rows.items():
        test = result["test"]
        test_vs = report["paired_t_tests"].get(row)
        table.add_row(
            row,
            *(f"{test[m]:.4f}" for m in METRIC_NAMES),
            "" if result["valid_ndcg10"] is None else f"{result['valid_ndcg10']:.4f}",
            f"{result['seconds_per_epoch']:.1f}",
            f"{result['trainable_parameters']:,}",
            f"{test['NDCG@10'] / rows[reference]['test']['NDCG@10']:.2f}x",
            "" if test_vs is None else f"{test_vs['NDCG@10']['p_value']:.2g}",
        )
    console.print(table)
    for row, result in rows.items():
        if result.get("recipe"):
            settings = ", ".join(f"{k}={v}" for k, v in result["recipe"].items())
            console.print(f"{row}: {result['preset']} with {settings}; best epochs {result['best_epochs']}")
    console.print(
        f"content models read {report['text_backbone']} states of titles cut at {report['text_max_tokens']} tokens"
    )
    for key, title in (
        ("test_unmasked", "unmasked full ranking"),
        ("test_cold", f"masked, {report['cold_test_users']} users whose test item never occurs in training"),
    ):
        extra = Table(title=f"{name}: test split, {title}")
        extra.add_column("row")
        for m in METRIC_NAMES:
            extra.add_column(m, justify="right")
        for row, result in rows.items():
            extra.add_row(row, *(f"{result[key][m]:.4f}" for m in METRIC_NAMES))
        console.print(extra)
    if report["tuning"]:
        print_budget(report["tuning"], name, console)


def print_budget(tuning: dict[str, dict[str, Any]], name: str, console: Console) -> None:
    """Each family's tuning budget spent and its best validation score."""
    budget = Table(title=f"{name}: tuning on the validation split, the same budget per family")
    for column in ("family", "finished trials", "trained", "pruned", "trial minutes", "best valid NDCG@10", "study"):
        budget.add_column(column, justify="left" if column in ("family", "study") else "right")
    for preset, summary in tuning.items():
        budget.add_row(
            preset,
            str(summary["finished_trials"]),
            str(summary["trained_trials"]),
            str(summary["pruned_trials"]),
            f"{summary['trial_minutes']:.1f}",
            f"{summary['valid NDCG@10']:.4f}",
            summary["study"],
        )
    console.print(budget)


if __name__ == "__main__":
    run_cli(main)
