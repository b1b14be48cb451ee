"""Training cost of cached side networks against adapting the backbones (paper Table 4).

    python benchmarks/efficiency.py                          # paper widths, toy data's batches
    python benchmarks/efficiency.py --widths tiny --steps 10 --json
    python benchmarks/efficiency.py --data amazon --data-root DIR --models crossan-t lora-t fft-t

(DIR: a data set in the Amazon layout, such as Amazon Scientific; docs/data.md describes it.)

One run: the parent process reads the data set and draws one batch of `--users` training
windows; every model then trains on that same batch, each in its own process (so no model's
memory or threads affect another's), for `--steps` optimiser steps after one warm-up step:
the training step of `train.py` (`InBatchObjective`: the batch's unique items encoded, SASRec,
the debiased in-batch loss, backward, AdamW). Item inputs are made up in the shape each model
reads: cached models get float16 backbone states (7 x W per modality), uncached ones token ids
(30 per title) and 224 x 224 pixels (`--widths tiny`: the tiny backbones' shapes), so nothing
depends on media files; the arithmetic is the same as with real inputs.

Measured per model: seconds per step (median), seconds per epoch (steps per epoch of the data
set times seconds per step: extrapolated, not timed), peak training memory (on a GPU
`torch.cuda.max_memory_allocated`; on a CPU the process's resident high-water mark `VmHWM`
above its resident size `VmRSS` just before the first step, so it counts what the steps
allocate, not the model or the interpreter), and trainable parameters. The cached models' one-time
cost of caching (one forward pass of each backbone over every item, timed on a few items and
extrapolated) is reported on its own row, with the epochs after which it has paid for itself
against each uncached model. `--widths paper` builds randomly initialised backbones of the
paper's sizes (BERT-base, ViT-base, VideoMAE-base, AST-base) for timing only.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from timing import median_seconds, timed_call

from crossan.zoo.data import load_dataset
from crossan.zoo.data.dataset import PAD
from crossan.zoo.training.trainer import training_windows

DEFAULT_MODELS = ("crossan-tiva", "iisan-e-tiva@512", "iisan-e-tiva@1024", "fft-ti", "adapter-ti", "lora-ti")
CACHED_REFERENCE = "crossan-tiva"
IISAN_BEST, IISAN_SAME = "iisan-e-tiva@1024", "iisan-e-tiva@512"
CACHE_TIMING_ITEMS = 2
WINDOW_LENGTH = 11  # max_seq_len 10 + the target, as train.py cuts them


RESIDENT_MEMORY = "resident high-water above the state before the first step"


def _status_kb(field: str) -> int:
    """A `/proc/self/status` field in kB (Linux), 0 elsewhere."""
    status = Path("/proc/self/status")
    for line in status.read_text().splitlines() if status.is_file() else []:
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _model_and_features(spec: str, widths: str, num_items: int, generator: torch.Generator) -> tuple[Any, Any]:
    """The model `spec` (`preset` or `preset@adapter_dim`) at `widths`, and made-up inputs of
    `num_items` items in the layout it reads."""
    from crossan.zoo.backbones.tiny import tiny_backbone
    from crossan.zoo.features.store import ItemFeatures
    from crossan.zoo.models import create_model, preset_config
    from crossan.zoo.models.config import StoredFeatures

    preset, _, adapter_dim = spec.partition("@")
    overrides: dict[str, Any] = {"adapter_dim": int(adapter_dim)} if adapter_dim else {}
    config = preset_config(preset, **overrides)
    if config.stored_features is StoredFeatures.INPUTS:  # the model runs its backbones on stored inputs
        if widths == "tiny":
            overrides["backbones"] = tuple(tiny_backbone(m, seed=0)[0].config.to_dict() for m in config.modalities)
        model = create_model(preset, **overrides)
        inputs = model.random_item_inputs(num_items, generator)
        names = model.item_input_names
        stored = {
            n: t.to(torch.float16) if t.is_floating_point() else t.to(torch.int32)
            for n, t in zip(names, inputs, strict=True)
        }
    else:
        if widths == "tiny":
            from crossan.zoo.backbones.tiny import TINY_LAYERS, TINY_WIDTH

            overrides.update(
                backbone_widths=(TINY_WIDTH,) * len(config.backbone_modalities()), num_states=TINY_LAYERS + 1
            )
        model = create_model(preset, **overrides)
        stored = {
            n: t.to(torch.float16)
            for n, t in zip(model.item_input_names, model.random_item_inputs(num_items, generator), strict=True)
        }
    return model, ItemFeatures(num_items, stored)


def run_worker(arguments: dict[str, Any]) -> dict[str, Any]:
    """One model's training steps on the given batch; runs in its own process."""
    from crossan.zoo.training.negatives import ExtraNegatives
    from crossan.zoo.training.objective import InBatchObjective

    torch.manual_seed(0)
    device = torch.device(arguments["device"])
    window = torch.tensor(arguments["window"], dtype=torch.long)
    num_items = int(window.max())
    model, features = _model_and_features(
        arguments["model"], arguments["widths"], num_items, torch.Generator().manual_seed(0)
    )
    model.to(device).train()
    features.device = device
    uniform = torch.full((num_items + 1,), 1.0 / num_items, device=device)
    objective = InBatchObjective(model, features, ExtraNegatives(uniform))
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(trainable, lr=1e-4)
    window = window.to(device)

    def step() -> None:
        optimiser.zero_grad(set_to_none=True)
        loss, _, _ = objective(window)
        loss.backward()
        optimiser.step()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    before = _status_kb("VmRSS")
    synchronize = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else None
    # The first step (warm-up, optimiser state allocation) is not timed.
    seconds_per_step = median_seconds(step, arguments["steps"], warmup=1, synchronize=synchronize)
    peak_mb = (
        torch.cuda.max_memory_allocated(device) / 2**20
        if device.type == "cuda"
        else max(0, _status_kb("VmHWM") - before) / 1024
    )
    return {
        "seconds_per_step": seconds_per_step,
        "peak_memory_mb": peak_mb,
        "trainable_parameters": sum(p.numel() for p in trainable),
        "batch_items": num_items,
    }


def run_cache_worker(arguments: dict[str, Any]) -> dict[str, Any]:
    """Seconds per item of each cached modality's backbone forward pass (keeping all hidden states)."""
    import numpy as np
    from new_items import made_up_contents, make_extractor

    seconds = {}
    for modality in arguments["modalities"]:
        extractor = make_extractor(modality, arguments["widths"])
        contents = made_up_contents(modality, CACHE_TIMING_ITEMS, np.random.default_rng(0))
        extractor.encode(contents[:1])  # warm-up
        seconds[modality] = timed_call(functools.partial(extractor.encode, contents))[1] / CACHE_TIMING_ITEMS
    return {"seconds_per_item": seconds}


def in_subprocess(arguments: dict[str, Any], threads: int | None) -> dict[str, Any]:
    environment = dict(os.environ)
    if threads is not None:
        environment["OMP_NUM_THREADS"] = str(threads)
    result = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(arguments)],
        cwd=PROJECT / "benchmarks",
        capture_output=True,
        text=True,
        env=environment,
    )
    if result.returncode != 0:
        raise RuntimeError(f"{arguments.get('model', 'caching')} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def draw_batch(args: argparse.Namespace) -> tuple[list[list[int]], int, int, str]:
    """`--users` training windows (renumbered 1..U over their unique items), the data set's
    number of items and of training windows, and its name."""
    dataset = load_dataset(args.data, args.data_root, args.cache_dir)
    windows, _ = training_windows(dataset, WINDOW_LENGTH)
    generator = torch.Generator().manual_seed(0)
    picked = windows[torch.randperm(len(windows), generator=generator)[: args.users]]
    unique = torch.unique(picked[picked != PAD])
    renumbered = torch.where(picked == PAD, picked, torch.searchsorted(unique, picked) + 1)
    return renumbered.tolist(), dataset.num_items, len(windows), dataset.name


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        arguments = json.loads(sys.argv[2])
        print(json.dumps(run_cache_worker(arguments) if arguments.get("cache") else run_worker(arguments)))
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", choices=("toy", "amazon", "microlens"), default="toy")
    parser.add_argument("--data-root", type=Path, help="data folder (toy: generated under --cache-dir)")
    parser.add_argument("--cache-dir", type=Path, default=PROJECT / ".cache")
    parser.add_argument("--widths", choices=("paper", "tiny"), default="paper")
    parser.add_argument(
        "--models", nargs="+", default=list(DEFAULT_MODELS), help="presets, `preset@r` for another adapter dimension"
    )
    parser.add_argument(
        "--users", type=int, help="training windows per step (default 64; 8 at --widths paper on a CPU)"
    )
    parser.add_argument("--steps", type=int, default=3, help="timed steps per model after one warm-up (default 3)")
    parser.add_argument("--threads", type=int, help="intra-op threads of each worker (default: all)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", action="store_true", help="print one JSON object keyed by model name")
    args = parser.parse_args()
    if args.users is None:
        args.users = 8 if args.widths == "paper" and args.device == "cpu" else 64
    window, num_items, num_windows, name = draw_batch(args)
    steps_per_epoch = math.ceil(num_windows / args.users)
    results: dict[str, Any] = {}
    for model in args.models:
        results[model] = in_subprocess(
            {"model": model, "widths": args.widths, "window": window, "steps": args.steps, "device": args.device},
            args.threads,
        )
        results[model]["seconds_per_epoch"] = results[model]["seconds_per_step"] * steps_per_epoch
    cached = [m for m in args.models if not m.split("@")[0].startswith(("fft-", "adapter-", "lora-"))]
    uncached = [m for m in args.models if m not in cached]
    report: dict[str, Any] = dict(results)
    if CACHED_REFERENCE in results:
        modalities = ("text", "image", "video", "audio")
        per_item = in_subprocess({"cache": True, "modalities": list(modalities), "widths": args.widths}, args.threads)
        caching = sum(per_item["seconds_per_item"].values()) * num_items
        report["caching"] = {
            "seconds": caching,
            "seconds_per_item": per_item["seconds_per_item"],
            "break_even_epochs": {
                m: caching / (results[m]["seconds_per_epoch"] - results[CACHED_REFERENCE]["seconds_per_epoch"])
                for m in uncached
            },
        }
        for label, reference in (("improvement_best", IISAN_BEST), ("improvement_same", IISAN_SAME)):
            if reference in results:
                report[label] = {
                    key: 1 - results[CACHED_REFERENCE][key] / results[reference][key]
                    for key in ("seconds_per_step", "peak_memory_mb", "trainable_parameters")
                }
    report["setting"] = {
        "data": name,
        "items": num_items,
        "training_windows": num_windows,
        "users_per_step": args.users,
        "batch_items": len({i for row in window for i in row if i}),
        "steps_per_epoch": steps_per_epoch,
        "widths": args.widths,
        "device": args.device,
        "timed_steps": args.steps,
        "epoch": "extrapolated: steps per epoch x median seconds per step",
    }
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    print_table(report, cached, uncached)
    return 0


def print_table(report: dict[str, Any], cached: list[str], uncached: list[str]) -> None:
    from machine import cpu_name
    from rich.console import Console
    from rich.table import Table

    setting = report["setting"]
    table = Table(
        title=f"training cost per model, {setting['widths']} widths, {setting['data']} "
        f"({setting['users_per_step']} windows per step, {setting['batch_items']} items)",
        caption=f"{cpu_name() if setting['device'] == 'cpu' else torch.cuda.get_device_name()}; "
        f"median of {setting['timed_steps']} steps after a warm-up; s/epoch = "
        f"{setting['steps_per_epoch']} steps x s/step (extrapolated); memory: "
        f"{'peak allocated' if setting['device'] == 'cuda' else RESIDENT_MEMORY}",
    )
    for column in ("model", "s/step", "s/epoch", "peak MB", "trainable", "x crossan-tiva s/step"):
        table.add_column(column, justify="left" if column == "model" else "right")
    reference = report.get(CACHED_REFERENCE, {}).get("seconds_per_step")
    for model in [*cached, *uncached]:
        r = report[model]
        table.add_row(
            model,
            f"{r['seconds_per_step']:.3f}",
            f"{r['seconds_per_epoch']:,.0f}",
            f"{r['peak_memory_mb']:,.0f}",
            f"{r['trainable_parameters']:,}",
            f"{r['seconds_per_step'] / reference:.1f}" if reference else "-",
        )
    for label in ("improvement_best", "improvement_same"):
        if label in report:
            values = report[label]
            table.add_row(
                label.replace("_", " "),
                f"{values['seconds_per_step']:+.1%}",
                "",
                f"{values['peak_memory_mb']:+.1%}",
                f"{values['trainable_parameters']:+.1%}",
                "",
            )
    if "caching" in report:
        caching = report["caching"]
        table.add_row("caching (one-time, 4 backbones)", "", f"{caching['seconds']:,.0f}", "", "", "")
        for model, epochs in caching["break_even_epochs"].items():
            table.add_row(f"  paid back vs {model} after", "", f"{epochs:.2f} epochs", "", "", "")
    Console().print(table)


if __name__ == "__main__":
    raise SystemExit(main())
