"""Run-directory files, all written atomically (temporary file or folder + rename), and epoch checkpoints."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from crossan.zoo.core.atomic import atomic_write, write_failure
from crossan.zoo.core.errors import CorruptFileError
from crossan.zoo.core.finite import require_finite_tensors
from crossan.zoo.core.reading import load_tensors, read_json, read_json_object, require_keys

__all__ = ["write_json", "read_json", "save_weights", "save_per_user", "TrainingState", "Checkpoint", "CheckpointStore"]


def write_json(path: Path, value: Any) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(value, indent=2) + "\n"))


def _cpu_copies(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous CPU copies, as safetensors needs them (it refuses tensors that share storage)."""
    return {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}


def save_weights(path: Path, state: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Tensors to safetensors, atomically."""
    tensors = _cpu_copies(state)
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def save_per_user(path: Path, user_ids: list[str], ranks: torch.Tensor) -> None:
    """Per-user target ranks as JSON (`null` = the target was masked, a miss)."""
    values = [None if math.isinf(r) else int(r) for r in ranks.tolist()]
    write_json(path, {"user_ids": user_ids, "ranks": values})


@dataclass
class TrainingState:
    """Where training stands after its last finished epoch; JSON in `trainer_state.json`.

    Together with the checkpoint tensors (model, best model, optimizer, random generators)
    it is everything the next epoch and the final evaluation depend on.
    """

    epoch: int = 0
    step: int = 0
    best_score: float = -1.0
    best_epoch: int = 0
    stale: int = 0
    stopped: bool = False
    best_valid: dict[str, float] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Checkpoint:
    """One epoch's checkpoint as loaded back."""

    state: TrainingState
    model: dict[str, torch.Tensor]
    best_model: dict[str, torch.Tensor]
    best_valid_ranks: torch.Tensor | None
    optimizer: dict[str, Any]
    scaler: dict[str, Any]
    rng: dict[str, torch.Tensor]


class CheckpointStore:
    """Checkpoints of one run directory, written so that a crash never leaves one that loads wrongly.

    Each epoch's tensors go to a new folder `checkpoints/epoch-NNNN` (written under a hidden
    temporary name, fsynced, then renamed); only then is `trainer_state.json` replaced
    (atomically) to name it, and older folders are removed. A kill at any point leaves
    `trainer_state.json` naming a complete folder, or no checkpoint at all. The best epoch's
    weights are that epoch's `model.safetensors`: `trainer_state.json` names the file, and its
    folder is kept until a better epoch comes, so they are never written twice.
    """

    STATE_FILE = "trainer_state.json"
    FOLDER = "checkpoints"

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)

    def read_state(self) -> dict[str, Any] | None:
        """The raw `trainer_state.json`, or None when there is none yet (a damaged one is one line)."""
        path = self.run_dir / self.STATE_FILE
        return read_json_object(path) if path.exists() else None

    def save(
        self,
        state: TrainingState,
        model: dict[str, torch.Tensor],
        best_valid_ranks: torch.Tensor | None,
        optimizer: dict[str, Any],
        scaler: dict[str, Any],
        rng: dict[str, torch.Tensor],
    ) -> None:
        """Checkpoint the epoch `state.epoch`; its weights `model` are the best ones when
        `state.best_epoch` is this epoch."""
        folder = self.run_dir / self.FOLDER
        name = f"epoch-{state.epoch:04d}"
        temporary = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=_make_dirs(folder)))
        try:
            optimizer_tensors, optimizer_layout = _split_optimizer_state(optimizer)
            extra = dict(rng)
            if best_valid_ranks is not None:
                extra["best_valid_ranks"] = best_valid_ranks
            for file_name, tensors in (
                ("model.safetensors", model),
                ("optimizer.safetensors", optimizer_tensors),
                ("state.safetensors", extra),
            ):
                save_file(_cpu_copies(tensors), str(temporary / file_name))
            (temporary / "optimizer.json").write_text(json.dumps({**optimizer_layout, "scaler": scaler}) + "\n")
            for path in temporary.iterdir():
                with open(path, "rb") as handle:
                    os.fsync(handle.fileno())
            os.chmod(temporary, 0o755)
            final = folder / name
            if final.exists():  # left by a run killed after the rename, before the state named it
                shutil.rmtree(final)
            os.replace(temporary, final)
        except BaseException as error:
            shutil.rmtree(temporary, ignore_errors=True)
            failure = write_failure(error, folder / name)
            if failure is not None:
                raise failure from None
            raise
        best = f"{self.FOLDER}/epoch-{state.best_epoch:04d}/model.safetensors"
        write_json(
            self.run_dir / self.STATE_FILE,
            {**dataclasses.asdict(state), "checkpoint": f"{self.FOLDER}/{name}", "best": best, "finished": False},
        )
        for old in folder.iterdir():
            if old.name not in (name, Path(best).parent.name):
                shutil.rmtree(old, ignore_errors=True)

    def started(self) -> bool:
        """Whether an epoch's checkpoint exists (training goes on from it rather than from the start)."""
        raw = self.read_state()
        return raw is not None and "checkpoint" in raw

    def load(self) -> Checkpoint | None:
        """The checkpoint `trainer_state.json` names, or None before the first epoch finished."""
        raw = self.read_state()
        if raw is None or "checkpoint" not in raw:
            return None
        state_path = self.run_dir / self.STATE_FILE
        names = [f.name for f in dataclasses.fields(TrainingState)]
        require_keys(raw, [*names, "best"], str(state_path))
        try:
            state = TrainingState(**{name: raw[name] for name in names})
        except TypeError as error:
            raise CorruptFileError(f"{state_path}: {error}") from None
        folder = self.run_dir / raw["checkpoint"]
        extra = load_tensors(folder / "state.safetensors")
        ranks = extra.pop("best_valid_ranks", None)
        layout = read_json_object(folder / "optimizer.json", ("param_groups", "scalars", "scaler"))
        optimizer = _join_optimizer_state(load_tensors(folder / "optimizer.safetensors"), layout)
        model, best = load_tensors(folder / "model.safetensors"), load_tensors(self.run_dir / raw["best"])
        for path, tensors in (
            (folder / "model.safetensors", model),
            (self.run_dir / raw["best"], best),
            (folder / "optimizer.safetensors", optimizer_tensors(optimizer)),
        ):
            require_finite_tensors(tensors, str(path))
        return Checkpoint(state, model, best, ranks, optimizer, layout["scaler"], extra)

    def mark_finished(self) -> None:
        """Record that the run finished (the last file a run writes)."""
        raw = self.read_state() or {}
        write_json(self.run_dir / self.STATE_FILE, {**raw, "finished": True})

    def finished(self) -> bool:
        raw = self.read_state()
        return bool(raw and raw.get("finished"))


def _make_dirs(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _split_optimizer_state(state_dict: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A torch optimizer state dict as tensors (`<param index>.<name>`) plus JSON for the rest."""
    tensors, scalars = {}, {}
    for index, values in state_dict["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{name}"] = value
            else:
                scalars[f"{index}.{name}"] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def optimizer_tensors(state_dict: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The tensors of an optimizer state dict by `<param index>.<name>` (for checks)."""
    return _split_optimizer_state(state_dict)[0]


def _join_optimizer_state(tensors: dict[str, torch.Tensor], layout: dict[str, Any]) -> dict[str, Any]:
    """Inverse of `_split_optimizer_state`."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in [*tensors.items(), *layout["scalars"].items()]:
        index, _, name = key.partition(".")
        state.setdefault(int(index), {})[name] = value
    return {"state": state, "param_groups": layout["param_groups"]}
