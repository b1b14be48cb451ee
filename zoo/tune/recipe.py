"""Recipe files: a preset and the config values that complete it, as JSON.

    {"preset": "crossan-t", "set": {"lr": 0.0004, "dropout": 0.2}, "origin": {...}}

`set` holds model-config and training-config fields, as `--set` would; `origin` says where the
recipe came from (the study and its storage, the trial and its validation score, the data set,
the preset, the search space and the feature settings); `recipe_origin` puts it in one line.
Any other key is an error: a misspelt `set` would otherwise train the preset's defaults.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from crossan.zoo.core.atomic import atomic_write
from crossan.zoo.core.errors import ConfigError, MissingFileError
from crossan.zoo.core.reading import read_json
from crossan.zoo.models import preset_config
from crossan.zoo.runs.settings import split_options
from crossan.zoo.training.trainer import TrainConfig

__all__ = ["RECIPE_KEYS", "check_recipe", "read_recipe", "recipe_origin", "write_recipe"]

RECIPE_KEYS = ("preset", "set", "origin")


def write_recipe(path: Path, preset: str, values: dict[str, Any], origin: dict[str, Any]) -> Path:
    """Write the recipe atomically (checked first, so a written recipe always loads)."""
    check_recipe(preset, values, path)
    text = json.dumps({"preset": preset, "set": values, "origin": origin}, indent=1) + "\n"
    atomic_write(path, lambda temporary: Path(temporary).write_text(text, encoding="utf-8"))
    return path


def read_recipe(path: Path) -> tuple[str, dict[str, Any]]:
    """The preset and the values of a recipe file; a malformed file or value is one line."""
    recipe = _recipe_object(path)
    check_recipe(recipe["preset"], recipe.get("set", {}), path)
    return recipe["preset"], dict(recipe.get("set", {}))


def recipe_origin(path: Path) -> str:
    """One line saying where the recipe in `path` came from, for `train.py --recipe` to print:
    its study, trial and validation score, and the data set, preset and space it was tuned on."""
    origin = _recipe_object(path).get("origin")
    if not isinstance(origin, dict) or not origin:
        return f"recipe {path}: no origin recorded (written by hand or by another program)"
    data, space = origin.get("data") or {}, origin.get("space") or {}
    score = origin.get("valid NDCG@10")
    parts = [
        f"recipe {path}: trial {origin.get('best_trial', '?')} of study {origin.get('study', '?')!r}",
        f"valid NDCG@10 {score:.4f}" if isinstance(score, (int, float)) else "no validation score",
        f"tuned on {data.get('kind', '?')} data set {data.get('name', '?')!r} at {data.get('root', '?')} "
        f"(fingerprint {data.get('fingerprint', '?')}, sequences {data.get('sequences', '?')})",
        f"preset {origin.get('preset', '?')}",
        f"space {space.get('file', '?')}",
    ]
    return ", ".join(parts)


def check_recipe(preset: str, values: dict[str, Any], where: str | Path) -> None:
    """Build the configs the recipe describes, so that a bad name or value names `where` (the
    file, or the option that gave the values)."""
    train, model = split_options(values)
    try:
        preset_config(preset, **model)
        TrainConfig(**train)
    except ConfigError as error:
        raise ConfigError(f"{where}: {error}") from None


def _recipe_object(path: Path) -> dict[str, Any]:
    """The JSON object of a recipe file with its keys checked (not its values)."""
    if not Path(path).is_file():
        raise MissingFileError(f"{path}: no such recipe file")
    recipe = read_json(Path(path))
    if (
        not isinstance(recipe, dict)
        or not isinstance(recipe.get("preset"), str)
        or not isinstance(recipe.get("set", {}), dict)
    ):
        raise ConfigError(f'{path}: a recipe is an object with a "preset" name and a "set" object of values')
    unknown = sorted(set(recipe) - set(RECIPE_KEYS))
    if unknown:
        raise ConfigError(
            f"{path}: unknown key(s) {', '.join(map(repr, unknown))}; a recipe has {', '.join(map(repr, RECIPE_KEYS))}"
        )
    return recipe
