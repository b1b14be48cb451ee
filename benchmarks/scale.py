"""How load, training, validation and memory grow with users, items and interactions.

    python benchmarks/scale.py [--users 10000 100000 1000000] [--items 10000 100000 1000000]
                               [--interactions-per-user 10] [--state-width 128] [--stage-limit 1800] [--json]

For every (users, items) point a synthetic data set is written once under `--work` in the
Amazon layout (`users.tsv`, `items.tsv`), with a planted rule so that the metrics mean something:
items come in clusters of 8 consecutive indices, and each next item stays in the previous
item's cluster with probability 0.8 (else any item). Beside it, a feature cache of random
float16 states (`[items, 7, --state-width]`, written and memory-mapped by the zoo's own state
cache, `crossan.zoo.features.states`), in which the items of a cluster share a direction, stands
in for the text backbone, so no backbone runs.

Each stage then runs the real code path in a fresh process, under `--stage-limit` seconds:

- read: `read_amazon` (parsing both files into the flat sequence layout);
- data set: the per-data-set work of a run (fingerprint, training counts, cold users, windows);
- epoch crossan-t, epoch sasrec-id: `Trainer.train_epoch` for one epoch at the preset's
  defaults (the AdamW step included, validation excluded), reported per 10^6 interactions; an
  epoch of more than `--epoch-steps` steps trains its first that many batches (`steps_per_epoch`)
  and its seconds are extrapolated to the whole epoch (`--epoch-steps 0`: every epoch whole);
- validation crossan-t, validation sasrec-id: one full-ranking validation over `--valid-users`
  users (`valid_users`, as training would), of the model the epoch stage left (untrained when
  that stage did not run), reported per 10^9 scores.

Per stage: seconds, peak resident memory above the process's footprint after imports and
reading the data (the footprint itself is among the facts; the two add up to the process's
peak) against what the stage's data need (sequences, item tables, model and optimiser, the
cache pages it reads), file sizes, and the growth exponent fitted by least squares on log seconds against the log of
the stage's driving size (interactions; ranked users x items for validation) and of the
catalogue size, over the points that finished. A stage past its limit is reported with the
limit and takes no part in the fit.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # the parent process imports NumPy only; each stage's process imports what it runs
    from crossan.zoo.data import SequenceDataset
    from crossan.zoo.features.store import ItemFeatures
    from crossan.zoo.models.recommender import Recommender

PRESETS = ("crossan-t", "sasrec-id")
"""The presets the epoch and validation stages time: one over cached states, one over item ids."""
CLUSTER = 8
STAY = 0.8
NUM_STATES = 7
SEED = 0
BATCH_SCORES = 1 << 26
"""Scores a ranking batch needs to hold at most (`crossan.zoo.training.evaluation.SCORE_BUDGET`)."""


@dataclass(frozen=True)
class Point:
    """One synthetic data set: its sizes and where it lives."""

    users: int
    items: int
    per_user: int
    width: int
    work: Path

    @property
    def interactions(self) -> int:
        return self.users * self.per_user

    @property
    def root(self) -> Path:
        return self.work / f"u{self.users}-i{self.items}-n{self.per_user}"

    @property
    def cache(self) -> Path:
        return self.root / f"states-w{self.width}.safetensors"


@dataclass
class StageResult:
    stage: str
    users: int
    items: int
    interactions: int
    seconds: float | None = None
    peak_bytes: int | None = None
    need_bytes: int | None = None
    driving_size: float | None = None
    per_unit_seconds: float | None = None
    facts: dict[str, Any] = field(default_factory=dict)
    status: str = "ok"


def write_data(point: Point) -> None:
    """The data set and its feature cache (once: a `.complete` marker says they are whole)."""
    marker = point.root / ".complete"
    if marker.is_file() and point.cache.is_file():
        return
    import torch

    from crossan.zoo.features.states import write_states

    rng = np.random.default_rng(SEED)
    point.root.mkdir(parents=True, exist_ok=True)
    sequences = np.empty((point.users, point.per_user), dtype=np.int64)
    sequences[:, 0] = rng.integers(0, point.items, point.users)
    for step in range(1, point.per_user):
        previous = sequences[:, step - 1]
        same = np.minimum(previous // CLUSTER * CLUSTER + rng.integers(0, CLUSTER, point.users), point.items - 1)
        sequences[:, step] = np.where(rng.random(point.users) < STAY, same, rng.integers(0, point.items, point.users))
    with (point.root / "items.tsv").open("w") as handle:
        handle.writelines(
            f"i{item}\tsynthetic item {item} of cluster {item // CLUSTER}\n" for item in range(point.items)
        )
    with (point.root / "users.tsv").open("w") as handle:
        for start in range(0, point.users, 100_000):
            rows = sequences[start : start + 100_000]
            handle.writelines(
                f"u{start + n}\t" + " ".join(f"i{item}" for item in row) + "\n" for n, row in enumerate(rows.tolist())
            )
    states = torch.empty(point.items, NUM_STATES, point.width, dtype=torch.float16)
    generator = torch.Generator().manual_seed(SEED)
    chunk = CLUSTER * 8192
    for start in range(0, point.items, chunk):
        rows = min(chunk, point.items - start)
        clusters = torch.randn(-(-rows // CLUSTER), NUM_STATES, point.width, generator=generator)
        noise = torch.randn(rows, NUM_STATES, point.width, generator=generator)
        states[start : start + rows] = (clusters.repeat_interleave(CLUSTER, dim=0)[:rows] + 0.5 * noise).half()
    write_states(point.cache, states, {"synthetic": "scale benchmark", "width": str(point.width)})
    marker.touch()


def reset_peak() -> int:
    """Start measuring a stage: reset the peak on Linux (`clear_refs`), so that `peak_rss`
    sees the stage's peak rather than a transient one during imports, and return the resident
    bytes now (the stage's footprint)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass  # elsewhere the peak counts from the process's start: an upper bound
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize()


def peak_rss() -> int:
    """This process's peak resident bytes since the last `reset_peak` (since its start where
    the peak cannot be reset)."""
    status = Path("/proc/self/status")
    for line in status.read_text().splitlines() if status.is_file() else ():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _sequence_bytes(point: Point) -> int:
    """The flat sequences: 4 bytes an interaction and 8 a user's offset."""
    return point.interactions * 4 + (point.users + 1) * 8


def read_stage(point: Point, valid_users: int, epoch_steps: int) -> dict[str, Any]:
    """`read_amazon` parsing both files."""
    from crossan.zoo.data import read_amazon

    baseline = reset_peak()
    started = time.perf_counter()
    dataset = read_amazon(point.root)
    seconds = time.perf_counter() - started
    id_bytes = sum(len(i) for i in dataset.item_ids) + sum(len(u) for u in dataset.user_ids)
    # Python keeps each id and title as an object (about 50 bytes on top of its characters).
    table_bytes = id_bytes + sum(len(t) for t in dataset.titles or ()) + 50 * (2 * point.items + point.users)
    return {
        "footprint": baseline,
        "seconds": seconds,
        "peak": peak_rss() - baseline,
        "need": _sequence_bytes(point) + table_bytes,
        "facts": {
            "files MB": round(sum(f.stat().st_size for f in point.root.glob("*.tsv")) / 1e6, 1),
            "cache MB": round(point.cache.stat().st_size / 1e6, 1),
        },
    }


def data_set_stage(point: Point, valid_users: int, epoch_steps: int) -> dict[str, Any]:
    """The per-data-set work of a run: fingerprint, training counts, cold users, windows."""
    from crossan.zoo.data import read_amazon
    from crossan.zoo.training.significance import cold_item_users
    from crossan.zoo.training.trainer import training_windows

    dataset = read_amazon(point.root)
    baseline = reset_peak()
    started = time.perf_counter()
    dataset.fingerprint()
    dataset.train_counts()
    cold_item_users(dataset, "test")
    windows, _ = training_windows(dataset, 11)
    seconds = time.perf_counter() - started
    return {
        "footprint": baseline,
        "seconds": seconds,
        "peak": peak_rss() - baseline,
        "need": windows.numel() * 8 + (point.items + 1) * 8 + point.users * 9,
        "facts": {"windows": len(windows)},
    }


@dataclass
class ModelSetup:
    """What the epoch and validation stages of a preset share: the data, the features the preset
    reads (the synthetic states, or none), its model, and the footprint before the model was built."""

    dataset: SequenceDataset
    features: ItemFeatures
    model: Recommender
    baseline: int
    parameter_bytes: int
    cache_bytes: int
    weights: Path


def _model_setup(preset: str, point: Point) -> ModelSetup:
    """Read the data set, then (its footprint taken) build `preset`'s model over the cache of `point`."""
    from crossan.zoo.data import read_amazon
    from crossan.zoo.features.states import open_states
    from crossan.zoo.features.store import ItemFeatures
    from crossan.zoo.models import build_model, preset_config

    dataset = read_amazon(point.root)
    baseline = reset_peak()
    base = preset_config(preset)
    modalities = base.backbone_modalities()  # the synthetic states stand in for each modality the preset reads
    states = open_states(point.cache) if modalities else None
    features = ItemFeatures(point.items, {modality: states for modality in modalities} or None)
    model = build_model(base.fit_to_data(point.items, features.shapes()))
    return ModelSetup(
        dataset,
        features,
        model,
        baseline,
        sum(p.numel() * 4 for p in model.parameters()),
        0 if states is None else states.numel() * 2,
        point.root / f"after-one-epoch-{preset}.safetensors",
    )


def epoch_stage(preset: str, point: Point, valid_users: int, epoch_steps: int) -> dict[str, Any]:
    """`Trainer.train_epoch` for one epoch of `preset` (its first `epoch_steps` batches, extrapolated);
    the weights it leaves are saved for the validation stage."""
    from rich.console import Console
    from safetensors.torch import save_file

    from crossan.zoo.training.trainer import TrainConfig, Trainer

    setup = _model_setup(preset, point)
    started = time.perf_counter()
    trainer = Trainer(
        setup.model, setup.dataset, setup.features, TrainConfig(epochs=1, patience=1), console=Console(quiet=True)
    )
    setup_seconds = time.perf_counter() - started
    steps = -(-len(trainer.windows) // trainer.config.batch_size)
    if 0 < epoch_steps < steps:  # the first batches of the epoch's shuffle, timed and extrapolated
        trainer.config = dataclasses.replace(trainer.config, steps_per_epoch=epoch_steps)
    started = time.perf_counter()
    loss = trainer.train_epoch(1)
    measured = time.perf_counter() - started
    taken = trainer.config.steps_per_epoch or steps
    save_file(setup.model.state_dict(), setup.weights)  # validation ranks with what this epoch learned
    # Parameters, gradients and AdamW's two moments; the windows; the cache pages read.
    need = 4 * setup.parameter_bytes + trainer.windows.numel() * 8 + _sequence_bytes(point) + setup.cache_bytes
    return {
        "footprint": setup.baseline,
        "seconds": measured * steps / taken,
        "peak": peak_rss() - setup.baseline,
        "need": need,
        "facts": {
            "loss": round(loss, 3),
            "steps": f"{taken} of {steps}" if taken < steps else steps,
            "set-up s": round(setup_seconds, 2),
        },
    }


def validation_stage(preset: str, point: Point, valid_users: int, epoch_steps: int) -> dict[str, Any]:
    """One full-ranking validation of `preset` over `valid_users` users, with the weights the
    epoch stage left (untrained when it did not run)."""
    from safetensors.torch import load_file

    from crossan.zoo.training.evaluation import evaluate_model, evaluation_users

    setup = _model_setup(preset, point)
    trained = setup.weights.is_file()
    if trained:
        setup.model.load_state_dict(load_file(setup.weights))
    sample = evaluation_users(setup.dataset.num_users, valid_users)
    ranked = setup.dataset.num_users if sample is None else len(sample)
    started = time.perf_counter()
    result = evaluate_model(setup.model, setup.dataset, setup.features, "valid", users=sample)
    seconds = time.perf_counter() - started
    # Parameters, the catalogue's embeddings (and their item table), the cache pages read.
    batch_scores = min(512 * point.items, BATCH_SCORES)
    # A batch's scores and their comparison with the targets.
    need = (
        setup.parameter_bytes
        + point.items * setup.model.config.embedding_dim * 4 * 2
        + batch_scores * 5
        + _sequence_bytes(point)
        + setup.cache_bytes
    )
    return {
        "footprint": setup.baseline,
        "seconds": seconds,
        "peak": peak_rss() - setup.baseline,
        "need": need,
        "scores": ranked * point.items,
        "facts": {
            "ranked users": ranked,
            "epochs trained": int(trained),
            "NDCG@10": f"{result.metrics['NDCG@10']:.4f} ± {result.standard_error('NDCG@10'):.4f}",
        },
    }


StageFunction = Callable[[Point, int, int], dict[str, Any]]
STAGE_FUNCTIONS: dict[str, StageFunction] = {
    "read": read_stage,
    "data set": data_set_stage,
    **{f"epoch {preset}": functools.partial(epoch_stage, preset) for preset in PRESETS},
    **{f"validation {preset}": functools.partial(validation_stage, preset) for preset in PRESETS},
}
"""Each stage's function: `(point, valid_users, epoch_steps)` to seconds, peak and needed bytes
(above the footprint after its imports and the data read) and facts worth printing."""
STAGES = tuple(STAGE_FUNCTIONS)


def run_stage(stage: str, point: Point, valid_users: int, epoch_steps: int) -> dict[str, Any]:
    """Run `stage` on `point` in this process (its function in `STAGE_FUNCTIONS`), from a fixed seed."""
    import torch

    torch.manual_seed(SEED)
    return STAGE_FUNCTIONS[stage](point, valid_users, epoch_steps)


def main_stage(argv: list[str]) -> int:
    """Child mode: run one stage, print its JSON on the last line."""
    stage, root, users, items, per_user, width, valid_users, epoch_steps = argv
    point = Point(int(users), int(items), int(per_user), int(width), Path(root))
    print(json.dumps(run_stage(stage, point, int(valid_users), int(epoch_steps))))
    return 0


def measure(stage: str, point: Point, valid_users: int, epoch_steps: int, limit: float) -> StageResult:
    """`stage` on `point` in a fresh process, killed after `limit` seconds."""
    result = StageResult(stage, point.users, point.items, point.interactions)
    command = [
        sys.executable,
        __file__,
        "--run-stage",
        stage,
        str(point.work),
        str(point.users),
        str(point.items),
        str(point.per_user),
        str(point.width),
        str(valid_users),
        str(epoch_steps),
    ]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=limit, check=False)
    except subprocess.TimeoutExpired:
        result.status = f"over the {limit:g} s limit"
        return result
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        result.status = f"failed: {tail}"
        return result
    values = json.loads(done.stdout.strip().splitlines()[-1])
    result.seconds, result.peak_bytes, result.need_bytes = values["seconds"], values["peak"], values["need"]
    result.facts = {"footprint MB": round(values["footprint"] / 2**20), **values["facts"]}
    if stage.startswith("validation"):
        result.driving_size = float(values["scores"])
        result.per_unit_seconds = result.seconds / result.driving_size * 1e9
    else:
        result.driving_size = float(point.interactions)
        result.per_unit_seconds = result.seconds / point.interactions * 1e6
    return result


def growth_exponents(results: list[StageResult]) -> dict[str, dict[str, float]]:
    """Per stage, least squares of log seconds on log driving size and log items (with an
    intercept) over the finished points; only the driving size when the items do not vary."""
    fitted: dict[str, dict[str, float]] = {}
    for stage in STAGES:
        done = [r for r in results if r.stage == stage and r.seconds is not None and r.seconds > 0]
        if len({r.driving_size for r in done}) < 2:
            continue
        drive = np.log([r.driving_size for r in done])
        items = np.log([r.items for r in done])
        columns = [np.ones(len(done)), drive]
        separate = len(set(items.tolist())) > 1 and np.linalg.matrix_rank(np.stack([columns[0], drive, items])) == 3
        if separate:
            columns.append(items)
        coefficients, *_ = np.linalg.lstsq(np.stack(columns, axis=1), np.log([r.seconds for r in done]), rcond=None)
        fitted[stage] = {"driving": float(coefficients[1])}
        if separate:
            fitted[stage]["items"] = float(coefficients[2])
    return fitted


def print_report(results: list[StageResult], exponents: dict[str, dict[str, float]], header: str) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 200)
    table = Table(title=header)
    for column in (
        "stage",
        "users",
        "items",
        "interactions",
        "seconds",
        "s per unit",
        "peak MB",
        "need MB",
        "peak / need",
        "facts",
    ):
        table.add_column(column, justify="left" if column in ("stage", "facts") else "right")
    for r in results:
        unit = (
            ""
            if r.per_unit_seconds is None
            else (
                f"{r.per_unit_seconds:.2f} /1e9 scores"
                if r.stage.startswith("validation")
                else f"{r.per_unit_seconds:.2f} /1e6 int."
            )
        )
        ratio = "" if not r.need_bytes or r.peak_bytes is None else f"{r.peak_bytes / r.need_bytes:.2f}"
        table.add_row(
            r.stage,
            f"{r.users:,}",
            f"{r.items:,}",
            f"{r.interactions:,}",
            r.status if r.seconds is None else f"{r.seconds:.2f}",
            unit,
            "" if r.peak_bytes is None else f"{r.peak_bytes / 2**20:,.0f}",
            "" if r.need_bytes is None else f"{r.need_bytes / 2**20:,.0f}",
            ratio,
            ", ".join(f"{k} {v}" for k, v in r.facts.items()),
        )
    console.print(table)
    growth = Table(
        title="growth exponents: log seconds fitted on log driving size (interactions; ranked users x "
        "items for validation) and log items"
    )
    for column in ("stage", "exponent in driving size", "exponent in items", "points"):
        growth.add_column(column, justify="left" if column == "stage" else "right")
    for stage, fit in exponents.items():
        points = sum(1 for r in results if r.stage == stage and r.seconds is not None)
        growth.add_row(stage, f"{fit['driving']:.2f}", f"{fit['items']:.2f}" if "items" in fit else "", str(points))
    console.print(growth)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--items", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--interactions-per-user", type=int, default=10, metavar="N")
    parser.add_argument("--state-width", type=int, default=128, help="width of the synthetic cached states")
    parser.add_argument(
        "--valid-users", type=int, default=10_000, help="users one validation ranks (valid_users; 0 = all)"
    )
    parser.add_argument(
        "--epoch-steps",
        type=int,
        default=1000,
        metavar="N",
        help="epochs of more steps train their first N batches and extrapolate the epoch's "
        "seconds from them (0 = every epoch whole)",
    )
    parser.add_argument(
        "--stages",
        nargs="+",
        choices=STAGES,
        default=list(STAGES),
        metavar="STAGE",
        help=f"stages to run (default: all of {', '.join(STAGES)})",
    )
    parser.add_argument(
        "--stage-limit",
        type=float,
        default=1800,
        metavar="SECONDS",
        help="a stage still running after this long is stopped and reported as such",
    )
    parser.add_argument(
        "--work",
        type=Path,
        default=Path("weights") / "scale",
        help="where the synthetic data sets are written (and reused)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    return parser


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--run-stage":
        return main_stage(sys.argv[2:])
    args = build_parser().parse_args()
    if args.interactions_per_user < 3:
        raise SystemExit("error: --interactions-per-user must be at least 3 (leave-one-out needs a training prefix)")
    if min(args.items) < CLUSTER or min(args.users) < 1:
        raise SystemExit(f"error: every --items needs at least {CLUSTER} items and every --users one user")
    from rich.progress import Progress

    points = [
        Point(u, i, args.interactions_per_user, args.state_width, args.work.resolve())
        for u in sorted(args.users)
        for i in sorted(args.items)
    ]
    results: list[StageResult] = []
    with Progress(transient=True) as progress:
        task = progress.add_task("scale", total=len(points) * (1 + len(args.stages)))
        for point in points:
            progress.update(task, description=f"writing {point.root.name}")
            write_data(point)
            progress.advance(task)
            for stage in args.stages:
                progress.update(task, description=f"{stage}: {point.root.name}")
                results.append(measure(stage, point, args.valid_users, args.epoch_steps, args.stage_limit))
                progress.advance(task)
    exponents = growth_exponents(results)
    header = (
        f"scale: {args.interactions_per_user} interactions per user, states of items x {NUM_STATES} x "
        f"{args.state_width} float16, validation over {args.valid_users:,} users, float32, "
        f"{_machine()}"
    )
    if args.json:
        print(json.dumps({"header": header, "results": [asdict(r) for r in results], "exponents": exponents}))
        return 0
    print_report(results, exponents, header)
    return 0


def _machine() -> str:
    import os

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from machine import cpu_name

    return f"{cpu_name()}, {os.cpu_count()} cores"


if __name__ == "__main__":
    sys.exit(main())
