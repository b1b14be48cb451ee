"""The item side at the paper's widths on this CPU: batched side layer vs per-tower reference, CROSSAN vs IISAN-E.

    python benchmarks/side_network.py [--items 704] [--steps 9] [--threads 1] [--json]

One forward + backward pass of the item side (side network, heads, fusion; backward from the
sum of the item embeddings) over `--items` items (704 = the unique items of a batch of 64
users on MicroLens) with four 768-wide backbones and 7 kept states, for:

- `crossan-tiva`: the batched side layer (all towers of a layer in one operation);
- `crossan-tiva-per-tower`: the same model and weights through the per-tower reference
  (`per_tower_outputs`: inputs stacked per tower, one standalone mixer and adapter at a time);
- `iisan-e-tiva@512`, `iisan-e-tiva@1024`: IISAN-E with adapter dimension 512 and 1024 (its
  preset), batched too.

The models are timed in one process, interleaved (one step of each in turn, `--steps`
rounds after one warm-up round), and each figure is the median. `--json` prints one object
with keys `crossan-tiva`, `crossan-tiva-per-tower`, `iisan-e-tiva@512`, `iisan-e-tiva@1024`,
each `{"ms_per_step": ...}`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

import torch
from machine import cpu_name
from rich.console import Console
from rich.table import Table
from timing import interleaved_medians

import crossan
from crossan.zoo.models.side_network import SideNetworkRecommender

RATIOS = (
    ("crossan-tiva", "crossan-tiva-per-tower", "batched / per-tower"),
    ("crossan-tiva", "iisan-e-tiva@512", "crossan-tiva / iisan-e-tiva@512"),
    ("crossan-tiva", "iisan-e-tiva@1024", "crossan-tiva / iisan-e-tiva@1024"),
)


def item_side_step(
    model: SideNetworkRecommender, inputs: tuple[torch.Tensor, ...], per_tower: bool
) -> Callable[[], None]:
    """One forward + backward of the item side, through the batched or the per-tower side network."""

    def step() -> None:
        model.zero_grad(set_to_none=True)
        states = model.side_states(inputs)
        outputs = model.per_tower_outputs(states) if per_tower else model.tower_outputs(states)
        model.fusion(model.head_embeddings(outputs)).sum().backward()

    return step


def build_cases(items: int) -> dict[str, Callable[[], None]]:
    generator = torch.Generator().manual_seed(0)
    cases = {}
    for label, preset, overrides, per_tower in (
        ("crossan-tiva", "crossan-tiva", {}, False),
        ("crossan-tiva-per-tower", "crossan-tiva", {}, True),
        ("iisan-e-tiva@512", "iisan-e-tiva", {"adapter_dim": 512}, False),
        ("iisan-e-tiva@1024", "iisan-e-tiva", {}, False),
    ):
        torch.manual_seed(0)
        model = crossan.create_model(preset, **overrides).train()
        cases[label] = item_side_step(model, model.random_item_inputs(items, generator), per_tower)
    return cases


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=704, help="items per step (default 704)")
    parser.add_argument("--steps", type=int, default=9, help="timed rounds (at least 7; default 9)")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (default 1)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args()
    if args.steps < 7 or args.items < 1 or args.threads < 1:
        parser.error("--steps must be at least 7, --items and --threads positive")
    torch.set_num_threads(args.threads)
    # The cases take turns step by step, after one warm-up round (allocator, MKL buffers).
    seconds = interleaved_medians(build_cases(args.items), args.steps)
    medians = {name: value * 1e3 for name, value in seconds.items()}  # milliseconds per step
    if args.json:
        print(json.dumps({name: {"ms_per_step": round(ms, 2)} for name, ms in medians.items()}))
        return 0
    table = Table(
        title=f"item side forward + backward, {args.items} items, 4 x 768 backbones, 7 states (CPU)",
        caption=f"{cpu_name()}; {args.threads} thread(s); median of {args.steps} interleaved steps; "
        f"torch {torch.__version__}",
    )
    table.add_column("model")
    table.add_column("ms / step", justify="right")
    for name, ms in medians.items():
        table.add_row(name, f"{ms:.1f}")
    ratios = Table(title="ratios (same run)")
    ratios.add_column("ratio")
    ratios.add_column("value", justify="right")
    for numerator, denominator, label in RATIOS:
        ratios.add_row(label, f"{medians[numerator] / medians[denominator]:.3f}")
    # Rich falls back to 80 columns when stdout is not a terminal, which would wrap the tables.
    console = Console(width=None if sys.stdout.isatty() else 120)
    console.print(table)
    console.print(ratios)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
