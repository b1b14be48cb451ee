"""What can go wrong when an exported encoder is checked against PyTorch, one class per kind.

The checks run in a fixed order (names, then shapes, then values, then recommendations) and
stop at the first failure, so the class says which property broke first.
"""
from __future__ import annotations

__all__ = ["ExportValidationError", "NameMismatchError", "ShapeMismatchError", "ValueMismatchError",
           "RecommendationMismatchError"]


class ExportValidationError(Exception):
    """An exported encoder does not reproduce the PyTorch model."""


class NameMismatchError(ExportValidationError):
    """The exported graph's input or output names differ from its export spec."""


class ShapeMismatchError(ExportValidationError):
    """An axis the spec declares dynamic is fixed in the graph, or an output has the wrong shape or dtype."""


class ValueMismatchError(ExportValidationError):
    """Outputs differ from PyTorch by more than the spec's tolerance (or are not finite)."""


class RecommendationMismatchError(ExportValidationError):
    """Top-k recommendations from the exported encoders differ from PyTorch's for some users."""
