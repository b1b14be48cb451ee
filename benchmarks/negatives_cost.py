"""Training cost of each negative option (and the ID term, cosine scores and the frozen-similarity
prior) against the plain in-batch loss.

    python benchmarks/negatives_cost.py --data-root DIR [--json]
    python benchmarks/negatives_cost.py --data toy --steps 5 --rounds 2 --json

(DIR: a data set in the Amazon layout, such as Amazon Scientific; docs/data.md describes it.)

One process, one data set, one feature cache: for every model (`sasrec-id`, `crossan-t` over
MiniLM states of titles cut at 64 tokens, as `real_data.py` trains them, on sliding windows) and
every option, a `Trainer` is built with the option and trains the first `--steps` batches of an
epoch (`Trainer.train_epoch` with `steps_per_epoch`: the training loop of `train.py`, AdamW
step included, validation excluded). The options take turns for `--rounds` rounds after one
untimed warm-up round, so that a load change on the machine hits every option alike. Seconds
per epoch = median seconds per step times the batches of a full epoch (extrapolated); the
ratio is to the same model's in-batch row.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

# The real-data benchmark's features and score temperature, so that both benchmarks time one setting.
from real_data import COSINE, PRIOR, TEXT_BACKBONE, TEXT_MAX_TOKENS
from timing import interleaved_medians

from crossan.zoo.cli.options import run_cli
from crossan.zoo.data import DATA_KINDS, load_dataset
from crossan.zoo.features.prepare import prepare_features
from crossan.zoo.features.settings import FeatureSettings
from crossan.zoo.models import build_model, preset_config
from crossan.zoo.runs.pipeline import resolve_device
from crossan.zoo.training.trainer import TrainConfig, Trainer

PLAIN = "in-batch"


def option_rows(sampled: int, memory: int) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """Row name -> (training settings, model settings) on top of the plain in-batch loss."""
    return {
        PLAIN: ({}, {}),
        f"+ {sampled} uniform": ({"sampled_negatives": sampled, "negative_sampling": "uniform"}, {}),
        f"+ {sampled} popularity": ({"sampled_negatives": sampled, "negative_sampling": "popularity"}, {}),
        f"+ memory {memory}": ({"memory_size": memory}, {}),
        "full softmax": ({"full_softmax": True}, {}),
        "+ ID term": ({}, {"item_id_term": True}),
        f"cosine / {COSINE['score_temperature']}": ({}, COSINE),
        f"cosine + prior {PRIOR['backbone_prior_weight']}": ({}, {**COSINE, **PRIOR}),
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="amazon", choices=DATA_KINDS)
    parser.add_argument("--data-root", type=Path, help="data folder (required unless --data toy)")
    parser.add_argument("--models", nargs="+", default=["sasrec-id", "crossan-t"])
    parser.add_argument("--sampled", type=int, default=1024, help="sampled negatives per step")
    parser.add_argument("--memory", type=int, default=4096, help="cross-batch memory size")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per option and round")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds (after one warm-up round)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--cache-dir", type=Path, default=Path(".cache"))
    parser.add_argument("--json", action="store_true", help="print one JSON object: model -> row -> timings")
    return parser


def next_epoch(trainer: Trainer, label: str, rounds: int, console: Console) -> Callable[[], None]:
    """A call that trains `trainer`'s next epoch (1, 2, ...), saying which round it is."""
    epochs = itertools.count(1)

    def train() -> None:
        epoch = next(epochs)
        console.print(f"round {epoch - 1}/{rounds}: {label}")
        trainer.train_epoch(epoch)

    return train


def _accepts(config: Any, settings: dict[str, Any]) -> bool:
    """Whether the model config has every given field (the ID term exists for content models only)."""
    names = {field.name for field in dataclasses.fields(config)}
    return set(settings) <= names


def main() -> int:
    parser = build_parser()
    args = parser.parse_args()
    if args.steps < 1 or args.rounds < 1 or args.sampled < 1 or args.memory < 1:
        parser.error("--steps, --rounds, --sampled and --memory must be positive")
    console = Console(stderr=True)
    device = resolve_device(args.device)
    dataset = load_dataset(args.data, args.data_root, args.cache_dir)
    settings = FeatureSettings(
        cache_dir=args.cache_dir, text_max_tokens=TEXT_MAX_TOKENS, overrides=(("text", TEXT_BACKBONE),)
    )
    quiet = Console(quiet=True)
    trainers: dict[tuple[str, str], Trainer] = {}
    for model_name in args.models:
        base = preset_config(model_name)
        prepared = prepare_features(dataset, base, settings, device, console).features
        for row, (train_settings, model_settings) in option_rows(args.sampled, args.memory).items():
            if not _accepts(base, model_settings):
                continue
            config = preset_config(model_name, **model_settings)
            features = prepared.with_item_rows(config.reads_item_rows)
            torch.manual_seed(0)
            model = build_model(config.fit_to_data(dataset.num_items, features.shapes()))
            train = TrainConfig(sliding_windows=True, steps_per_epoch=args.steps, precision="fp32", **train_settings)
            trainers[model_name, row] = Trainer(model, dataset, features, train, device, quiet)
    epochs = {key: next_epoch(trainer, ", ".join(key), args.rounds, console) for key, trainer in trainers.items()}
    synchronize = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else None
    # The options take turns round by round; the warm-up round allocates optimiser state and fills caches.
    seconds_per_epoch = interleaved_medians(epochs, args.rounds, warmup=1, synchronize=synchronize)
    report: dict[str, dict[str, dict[str, float]]] = {}
    for (model_name, row), trainer in trainers.items():
        steps = -(-len(trainer.windows) // trainer.config.batch_size)
        per_step = seconds_per_epoch[model_name, row] / args.steps  # an epoch here is `--steps` steps
        report.setdefault(model_name, {})[row] = {
            "seconds_per_step": per_step,
            "steps_per_epoch": steps,
            "seconds_per_epoch": per_step * steps,
        }
    for rows in report.values():
        for entry in rows.values():
            entry["ratio_to_in_batch"] = entry["seconds_per_epoch"] / rows[PLAIN]["seconds_per_epoch"]
    if args.json:
        print(json.dumps(report))
        return 0
    table = Table(
        title=f"{dataset.name}: training seconds per epoch by negative option "
        f"(sliding windows, batch 64, {torch.get_num_threads()} threads, {device.type})"
    )
    for column in ("model", "option", "s/step", "steps/epoch", "s/epoch", "vs in-batch"):
        table.add_column(column, justify="left" if column in ("model", "option") else "right")
    for model_name, rows in report.items():
        for row, entry in rows.items():
            table.add_row(
                model_name,
                row,
                f"{entry['seconds_per_step']:.3f}",
                f"{entry['steps_per_epoch']:,}",
                f"{entry['seconds_per_epoch']:.1f}",
                f"{entry['ratio_to_in_batch']:.2f}x",
            )
    Console(width=None if sys.stdout.isatty() else 140).print(table)
    return 0


if __name__ == "__main__":
    run_cli(main)
