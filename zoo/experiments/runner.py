"""Train a table's missing runs: finished runs are kept, unfinished ones resumed, others started;
several processes can share the work."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from crossan.zoo.core.errors import ConfigError
from crossan.zoo.core.file_lock import file_lock
from crossan.zoo.data import SequenceDataset
from crossan.zoo.experiments.definition import RunSpec, TableDefinition
from crossan.zoo.features.settings import FeatureSettings
from crossan.zoo.runs.pipeline import differing_options, resume_run, train_and_save
from crossan.zoo.runs.settings import split_options
from crossan.zoo.training.checkpoint import CheckpointStore, read_json
from crossan.zoo.training.trainer import TrainConfig

__all__ = ["TableRuns", "run_directory", "train_missing"]


@dataclass(frozen=True)
class TableRuns:
    """Where a table's runs live and what they are trained on."""

    definition: TableDefinition
    out_dir: Path
    seeds: tuple[int, ...]

    def __post_init__(self) -> None:
        for folder in (self.out_dir, self.folder):
            if folder.exists() and not folder.is_dir():
                raise ConfigError(
                    f"--out {self.out_dir}: {folder} is a file; the table's runs and report go in a folder"
                )

    @property
    def folder(self) -> Path:
        return self.out_dir / self.definition.name

    def directory(self, run: RunSpec, seed: int) -> Path:
        return run_directory(self.folder, run, seed)


def run_directory(folder: Path, run: RunSpec, seed: int) -> Path:
    """`<folder>/<run name as a file name>-seed<N>` (`CROSSAN (T+I)` -> `crossan-t-i-seed42`)."""
    slug = re.sub(r"[^a-z0-9.=]+", "-", run.name.lower()).strip("-")
    return folder / f"{slug}-seed{seed}"


def train_missing(
    table: TableRuns,
    dataset: SequenceDataset,
    data_description: dict[str, Any],
    settings: FeatureSettings,
    overrides: dict[str, Any],
    device: torch.device,
    console: Console,
) -> dict[str, str]:
    """Make every (run, seed) of the table finished; returns what was done to each run folder
    (`kept`, `resumed` or `trained`). `overrides` (e.g. `epochs` from the command line) apply to
    every run on top of the definition's.

    Several processes on one machine can share a table: each claims a run with a lock beside its
    folder and passes over the runs that another holds, then waits for those and keeps them (or
    resumes one whose holder died)."""
    done: dict[str, str] = {}
    held_elsewhere = []
    for run in table.definition.runs:
        for seed in table.seeds:
            with file_lock(_claim_path(table.directory(run, seed)), blocking=False) as claimed:
                if claimed:
                    done.update(
                        _finish_run(table, run, seed, dataset, data_description, settings, overrides, device, console)
                    )
                else:
                    console.print(f"[dim]{_label(table, run, seed)}: another process holds it; back to it later")
                    held_elsewhere.append((run, seed))
    for run, seed in held_elsewhere:
        console.print(f"[dim]{_label(table, run, seed)}: waiting for the process that holds it")
        with file_lock(_claim_path(table.directory(run, seed))):
            done.update(_finish_run(table, run, seed, dataset, data_description, settings, overrides, device, console))
    return done


def _claim_path(run_dir: Path) -> Path:
    return run_dir.parent / f".{run_dir.name}.lock"


def _label(table: TableRuns, run: RunSpec, seed: int) -> str:
    return f"{table.definition.name}/{table.directory(run, seed).name}"


def _finish_run(
    table: TableRuns,
    run: RunSpec,
    seed: int,
    dataset: SequenceDataset,
    data_description: dict[str, Any],
    settings: FeatureSettings,
    overrides: dict[str, Any],
    device: torch.device,
    console: Console,
) -> dict[str, str]:
    """Keep, resume or train one claimed run; `{folder name: what was done}`."""
    train_values, model_values = split_options({**table.definition.train, **run.options, **overrides})
    run_dir, label = table.directory(run, seed), _label(table, run, seed)
    if (run_dir / "config.json").is_file():
        recorded = read_json(run_dir / "config.json")
        expected = {
            "preset": run.preset,
            "data.fingerprint": dataset.fingerprint(),
            "train.seed": seed,
            **{f"train.{k}": v for k, v in train_values.items()},
            **{f"model.{k}": v for k, v in model_values.items()},
        }
        if "sequences" in recorded.get("data", {}):  # runs of older versions did not record it
            expected["data.sequences"] = data_description["sequences"]
        metrics = read_json(run_dir / "metrics.json") if (run_dir / "metrics.json").is_file() else {}
        differing = differing_options(recorded, expected, metrics.get("chosen_on_validation", {}))
        if differing:
            raise ConfigError(
                f"{run_dir} was trained with other settings ({', '.join(differing)} differ "
                "from the table); remove it or choose another --out"
            )
    if CheckpointStore(run_dir).finished() and (run_dir / "metrics.json").is_file():
        console.print(f"[dim]{label}: finished, kept")
        return {run_dir.name: "kept"}
    if (run_dir / "config.json").is_file():
        console.print(f"[bold]{label}: unfinished, resuming")
        resume_run(run_dir, device, console)
        return {run_dir.name: "resumed"}
    console.print(f"[bold]{label}: training")
    train_and_save(
        run.preset,
        dataset,
        data_description,
        settings,
        TrainConfig(**{**train_values, "seed": seed}),
        model_values,
        run_dir,
        device,
        console,
    )
    return {run_dir.name: "trained"}
