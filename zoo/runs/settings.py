"""Settings given as one flat `{field: value}` mapping (recipes, `--set`, experiment tables)."""

from __future__ import annotations

import dataclasses
from typing import Any

from crossan.zoo.training.trainer import TrainConfig

__all__ = ["split_options"]


def split_options(values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Sort `{field: value}` into training-config fields and model-config overrides (the model
    fields are checked when the preset's config is built)."""
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    train = {k: v for k, v in values.items() if k in train_fields}
    return train, {k: v for k, v in values.items() if k not in train_fields}
