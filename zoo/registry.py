"""Registry: architecture names -> (config class, model class); presets -> built models."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from zoo.models.base import Recommender
from zoo.models.config import CrossanConfig, IISANConfig, RecommenderConfig, SASRecIDConfig
from zoo.models.crossan import Crossan
from zoo.models.iisan import IISAN
from zoo.models.presets import PRESETS
from zoo.models.sasrec_id import SASRecID

__all__ = ["ARCHITECTURES", "create_model", "list_models", "preset_config", "config_from_dict",
           "build_model", "load_model"]

ARCHITECTURES: dict[str, tuple[type[RecommenderConfig], type[Recommender]]] = {
    CrossanConfig.architecture: (CrossanConfig, Crossan),
    IISANConfig.architecture: (IISANConfig, IISAN),
    SASRecIDConfig.architecture: (SASRecIDConfig, SASRecID),
}


def list_models() -> list[str]:
    """Names of every registered preset, sorted."""
    return sorted(PRESETS)


def preset_config(name: str, **overrides: Any) -> RecommenderConfig:
    """The config of preset `name` with `overrides` applied (None values are ignored)."""
    if name not in PRESETS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    fields = dict(PRESETS[name])
    config_cls, _ = ARCHITECTURES[fields.pop("architecture")]
    fields.update({k: v for k, v in overrides.items() if v is not None})
    valid = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(fields) - valid)
    if unknown:
        raise ValueError(f"{name}: unknown config field(s) {', '.join(unknown)}; "
                         f"{config_cls.__name__} has {', '.join(sorted(valid))}")
    return config_cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})


def config_from_dict(values: dict[str, Any]) -> RecommenderConfig:
    """Rebuild a config saved with `to_dict` (dispatching on its `architecture`)."""
    architecture = values.get("architecture")
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; known: {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[architecture][0].from_dict(values)


def build_model(config: RecommenderConfig) -> Recommender:
    """Instantiate the model class registered for `config`'s architecture."""
    return ARCHITECTURES[config.architecture][1](config)


def create_model(name: str, **overrides: Any) -> Recommender:
    """Build the trainable part of preset `name` (side network + fusion + SASRec, no backbones).

    Keyword overrides name config fields, e.g. `create_model("iisan-e-tiva", adapter_dim=512)`.
    """
    return build_model(preset_config(name, **overrides))


def load_model(run_dir: str | Path, device: str = "cpu") -> Recommender:
    """Rebuild a trained model from a run directory (`config.json` + `model.safetensors`)."""
    from safetensors.torch import load_file

    run_dir = Path(run_dir)
    config_path = run_dir / "config.json"
    weights_path = run_dir / "model.safetensors"
    for path in (config_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing; is {run_dir} a finished training run?")
    model = build_model(config_from_dict(json.loads(config_path.read_text())["model"]))
    model.load_state_dict(load_file(weights_path, device=device), strict=True)
    return model.to(device).eval()
