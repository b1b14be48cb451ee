"""Recipe files: a preset and the config values that complete it, as JSON.

    {"preset": "crossan-t", "set": {"lr": 0.0004, "dropout": 0.2}, "origin": {...}}

`set` holds model-config and training-config fields, as `--set` would; `origin` says where the
recipe came from (the study, the trial, its validation score) and is not read back.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from crossan.zoo.errors import ConfigError, MissingFileError
from crossan.zoo.models import preset_config
from crossan.zoo.cli import split_options
from crossan.zoo.training.trainer import TrainConfig

__all__ = ["read_recipe", "write_recipe"]


def write_recipe(path: Path, preset: str, values: dict[str, Any], origin: dict[str, Any]) -> Path:
    """Write the recipe (checked first, so a written recipe always loads)."""
    check_recipe(preset, values, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"preset": preset, "set": values, "origin": origin}, indent=1) + "\n")
    return path


def read_recipe(path: Path) -> tuple[str, dict[str, Any]]:
    """The preset and the values of a recipe file; a malformed file or value is one line."""
    if not Path(path).is_file():
        raise MissingFileError(f"{path}: no such recipe file")
    try:
        recipe = json.loads(Path(path).read_text())
    except json.JSONDecodeError as error:
        raise ConfigError(f"{path}: not JSON ({error.msg} at line {error.lineno})") from None
    if not isinstance(recipe, dict) or not isinstance(recipe.get("preset"), str) or not isinstance(
            recipe.get("set", {}), dict):
        raise ConfigError(f"{path}: a recipe is an object with a \"preset\" name and a \"set\" object of values")
    check_recipe(recipe["preset"], recipe.get("set", {}), path)
    return recipe["preset"], dict(recipe.get("set", {}))


def check_recipe(preset: str, values: dict[str, Any], path: Path) -> None:
    """Build the configs the recipe describes, so that a bad name or value names the file."""
    train, model = split_options(values)
    try:
        preset_config(preset, **model)
        TrainConfig(**train)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None
