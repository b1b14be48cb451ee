"""ONNX and TorchScript export of the item and user encoders, validated against PyTorch, and serving.

    python -m export --run weights/<run>      # files and validation.json in weights/<run>/export
"""
from export.errors import (ExportValidationError, NameMismatchError, RecommendationMismatchError, ShapeMismatchError,
                           ValueMismatchError)
from export.exporter import ExportedModel, ExportReport, export_model, export_run, validate_grid
from export.serve import OnnxRecommender, UnknownItemError
from export.spec import DEFAULT_OPSET, TOLERANCE, ExportSpec, item_encoder_spec, user_encoder_spec
from export.wrappers import ItemEncoder, UserEncoder

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
