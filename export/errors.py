"""What can go wrong when an exported encoder is checked against PyTorch, one class per kind.

The checks run in a fixed order (names, then shapes, then values, then recommendations) and
stop at the first failure, so the class says which property broke first.
"""

from __future__ import annotations

from crossan.zoo.core.errors import UserError

__all__ = [
    "ExportValidationError",
    "NameMismatchError",
    "ShapeMismatchError",
    "ValueMismatchError",
    "RecommendationMismatchError",
    "NonFiniteOutputError",
    "ExportWriteError",
    "ExportFileError",
    "NonFiniteScoreError",
]


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


class NonFiniteOutputError(ValueMismatchError, UserError):
    """An encoder gives NaN or infinite outputs: in PyTorch the run's weights are broken, in a
    runtime the export is; either way nothing it ranks can be trusted (one line on the command line)."""


class ExportWriteError(UserError, OSError):
    """The export could not be written (disk full, a file-size limit, no permission); whatever the
    output folder held before is unchanged."""


class ExportFileError(UserError, ValueError):
    """A file of an export folder is empty, truncated, not in its format, changed since the export,
    or disagrees with the other files; the message names it."""


class NonFiniteScoreError(UserError, ValueError):
    """Serving met NaN or infinite embeddings or scores, which have no ranking; the message names
    the users or items."""
