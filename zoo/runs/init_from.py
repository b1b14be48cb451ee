"""Fine-tuning from a pretrained run: a new run's weights start from a finished run's.

`TrainConfig.init_from` names the finished run. Every tensor of the new model whose name and
shape match one of that run's is taken; the rest keep their fresh initialisation. State with a
row per item of the trained catalogue (`Recommender.catalogue_state`) is taken only when both
runs trained on the same catalogue: another catalogue's item vectors would be other items'. The
backbones both runs read must be the same ones (by weights and preprocessing), or the taken
side network would read states that mean something else. What was taken and what is new is
printed and recorded in the new run's `config.json` (`init_from`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from crossan.zoo.core.errors import ConfigError
from crossan.zoo.core.finite import require_finite_tensors
from crossan.zoo.core.reading import load_tensors
from crossan.zoo.models.recommender import Recommender
from crossan.zoo.runs.run import check_same_backbones, finished_run_config

__all__ = ["initialise_from"]


def initialise_from(model: Recommender, source: Path, config: dict[str, Any], console: Console) -> dict[str, Any]:
    """Copy into `model` (a new run described by `config`, its `config.json`) every tensor of
    the finished run in `source` that fits; returns the record of what was taken and what not."""
    source = Path(source)
    recorded = finished_run_config(source)
    backbones = config["features"]["backbones"]
    shared = {modality: backbones[modality] for modality in backbones if modality in recorded["features"]["backbones"]}
    check_same_backbones(source, recorded["features"]["backbones"], shared)
    weights_path = source / "model.safetensors"
    weights = load_tensors(weights_path)
    require_finite_tensors(weights, str(weights_path))
    same_catalogue = recorded["data"].get("fingerprint") == config["data"].get("fingerprint")
    catalogue_bound = set() if same_catalogue else set(model.catalogue_state())
    own = model.state_dict()
    taken = [
        name
        for name in own
        if name not in catalogue_bound and name in weights and weights[name].shape == own[name].shape
    ]
    if not taken:
        raise ConfigError(
            f"--init-from {source}: none of its tensors fits {config['preset']} (names or shapes differ "
            f"from its {recorded['preset']})"
        )
    model.load_state_dict({name: weights[name] for name in taken}, strict=False)
    record = {
        "run": str(source.resolve()),
        "preset": recorded["preset"],
        "same_catalogue": same_catalogue,
        "taken": taken,
        "new": [name for name in own if name not in taken and name not in catalogue_bound],
        "catalogue_bound": sorted(catalogue_bound & set(own)),
        "unused": [name for name in weights if name not in own],
        "shape_differs": [
            name
            for name in own
            if name not in catalogue_bound and name in weights and weights[name].shape != own[name].shape
        ],
    }
    values = sum(own[name].numel() for name in taken)
    console.print(
        f"initialised from {source} ({recorded['preset']}): {len(taken)} of {len(own)} tensors taken "
        f"({values:,} values)"
        + "".join(
            f"; {label}: {', '.join(record[key])}"
            for key, label in (("catalogue_bound", "per item of another catalogue, new"), ("new", "new"))
            if record[key]
        )
    )
    return record
