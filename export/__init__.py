"""ONNX and TorchScript export of the item and user encoders, validated against PyTorch, and serving.

    python -m export --run weights/<run>      # files and validation.json in weights/<run>/export

The serving side (`OnnxRecommender`, the specs, the errors) imports without PyTorch; the
export side (exporter, wrappers) needs it and is imported on first access (PEP 562), so a
serving process that does `from export import OnnxRecommender` never loads torch.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from export.errors import (ExportValidationError, NameMismatchError, RecommendationMismatchError, ShapeMismatchError,
                           ValueMismatchError)
from export.serve import OnnxRecommender, UnknownItemError
from export.spec import DEFAULT_OPSET, TOLERANCE, ExportSpec, item_encoder_spec, user_encoder_spec

if TYPE_CHECKING:
    from export.exporter import ExportedModel, ExportReport, export_model, export_run, validate_grid
    from export.wrappers import ItemEncoder, UserEncoder

# Export-side names and the module that defines each; they import torch, so they load lazily.
_LAZY = {
    "ExportedModel": "export.exporter",
    "ExportReport": "export.exporter",
    "export_model": "export.exporter",
    "export_run": "export.exporter",
    "validate_grid": "export.exporter",
    "ItemEncoder": "export.wrappers",
    "UserEncoder": "export.wrappers",
}

__all__ = [
    "DEFAULT_OPSET",
    "TOLERANCE",
    "ExportReport",
    "ExportSpec",
    "ExportValidationError",
    "ExportedModel",
    "ItemEncoder",
    "NameMismatchError",
    "OnnxRecommender",
    "RecommendationMismatchError",
    "ShapeMismatchError",
    "UnknownItemError",
    "UserEncoder",
    "ValueMismatchError",
    "export_model",
    "export_run",
    "item_encoder_spec",
    "user_encoder_spec",
    "validate_grid",
]


def __getattr__(name: str) -> Any:
    """Import an export-side name on first access and keep it as a module attribute."""
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
