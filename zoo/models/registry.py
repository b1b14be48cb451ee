"""Registry: architecture names -> (config class, model class), preset names -> config fields.

A model file registers its architecture and presets with `@register_model` on its model
class (timm-style). The registry imports no model file: `crossan.zoo.models` imports every
model file in its folder (a new architecture is one new file there) and re-exports the
lookups below, so callers import them from `crossan.zoo.models` (or `crossan`), where the
registry is complete.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crossan.zoo.core.errors import ConfigError, MissingFileError

if TYPE_CHECKING:
    from crossan.zoo.models.config import RecommenderConfig
    from crossan.zoo.models.recommender import Recommender

__all__ = [
    "register_model",
    "architectures",
    "create_model",
    "list_models",
    "preset_architecture",
    "preset_config",
    "config_from_dict",
    "build_model",
    "load_model",
]

_ARCHITECTURES: dict[str, tuple[type[RecommenderConfig], type[Recommender]]] = {}
_PRESETS: dict[str, tuple[str, dict[str, Any]]] = {}


def register_model(
    config_class: type[RecommenderConfig], presets: Mapping[str, Mapping[str, Any]]
) -> Callable[[type[Recommender]], type[Recommender]]:
    """Class decorator: register the model class under `config_class.architecture`, with its
    presets (name -> config fields the preset sets; the rest keep the config defaults)."""

    def register(model_class: type[Recommender]) -> type[Recommender]:
        name = config_class.architecture
        if not name or name in _ARCHITECTURES:
            raise ValueError(f"architecture name {name!r} is empty or registered twice")
        clashes = sorted(set(presets) & set(_PRESETS))
        if clashes:
            raise ValueError(f"presets registered twice: {', '.join(clashes)}")
        _ARCHITECTURES[name] = (config_class, model_class)
        for preset, fields in presets.items():
            _PRESETS[preset] = (name, dict(fields))
        return model_class

    return register


def architectures() -> dict[str, tuple[type[RecommenderConfig], type[Recommender]]]:
    """Registered architectures: name -> (config class, model class)."""
    return dict(_ARCHITECTURES)


def list_models() -> list[str]:
    """Names of every registered preset, sorted."""
    return sorted(_PRESETS)


def preset_architecture(name: str) -> str:
    """The architecture preset `name` builds, without building its config."""
    if name not in _PRESETS:
        raise ConfigError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    return _PRESETS[name][0]


def preset_config(name: str, **overrides: Any) -> RecommenderConfig:
    """The config of preset `name` with `overrides` applied (None values are ignored)."""
    if name not in _PRESETS:
        raise ConfigError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    architecture, fields = _PRESETS[name]
    config_cls = _ARCHITECTURES[architecture][0]
    fields = {**fields, **{k: v for k, v in overrides.items() if v is not None}}
    valid = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(fields) - valid)
    if unknown:
        raise ConfigError(
            f"{name}: unknown config field(s) {', '.join(unknown)}; "
            f"{config_cls.__name__} has {', '.join(sorted(valid))}"
        )
    # Preset and override values, lists as tuples; the config's `__post_init__` checks their types.
    values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
    return config_cls(**values)


def config_from_dict(values: dict[str, Any]) -> RecommenderConfig:
    """Rebuild a config saved with `to_dict` (dispatching on its `architecture`)."""
    architecture = values.get("architecture")
    if architecture not in _ARCHITECTURES:
        raise ConfigError(f"unknown architecture {architecture!r}; known: {', '.join(_ARCHITECTURES)}")
    return _ARCHITECTURES[architecture][0].from_dict(values)


def build_model(config: RecommenderConfig) -> Recommender:
    """Instantiate the model class registered for `config`'s architecture."""
    return _ARCHITECTURES[config.architecture][1](config)


def create_model(name: str, **overrides: Any) -> Recommender:
    """Build the trainable part of preset `name` (side network + fusion + SASRec, no backbones).

    Keyword overrides name config fields, e.g. `create_model("iisan-e-tiva", adapter_dim=512)`.
    """
    return build_model(preset_config(name, **overrides))


def load_model(run_dir: str | Path, device: str = "cpu") -> Recommender:
    """Rebuild a trained model from a run directory (`config.json` + `model.safetensors`).

    Damaged files, weights that do not fit the recorded config, and NaN or infinite weights
    are each one line naming the file."""
    from crossan.zoo.core.errors import CorruptFileError
    from crossan.zoo.core.finite import require_finite_tensors
    from crossan.zoo.core.reading import load_tensors, read_json_object

    run_dir = Path(run_dir)
    config_path = run_dir / "config.json"
    weights_path = run_dir / "model.safetensors"
    for path in (config_path, weights_path):
        if not path.is_file():
            raise MissingFileError(f"{path}: missing; is {run_dir} a finished training run?")
    recorded = read_json_object(config_path, ("model",))["model"]
    try:
        model = build_model(config_from_dict(recorded))
    except (ConfigError, KeyError, TypeError) as error:
        raise CorruptFileError(f"{config_path}: its model config does not build ({error})") from None
    weights = load_tensors(weights_path, device=device)
    require_finite_tensors(weights, str(weights_path))
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as error:
        first = next((line.strip() for line in str(error).splitlines()[1:] if line.strip()), str(error))
        raise CorruptFileError(
            f"{weights_path}: its tensors do not fit the model {config_path} describes ({first})"
        ) from None
    return model.to(device).eval()
