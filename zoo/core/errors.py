"""The one error class the command line prints as a single line.

Anything a user can fix (a bad option, a bad data file, a missing run or backbone) raises a
`UserError`; everything else is a bug and keeps its traceback. Subclasses that also derive
from a built-in (`ConfigError` is a `ValueError`) keep library callers' `except` clauses working.
"""

from __future__ import annotations

__all__ = [
    "UserError",
    "ConfigError",
    "MissingFileError",
    "NonFiniteError",
    "DivergedError",
    "CorruptFileError",
    "NoResultError",
]


class UserError(Exception):
    """Bad input that the user can fix; `str()` is the whole message, one line."""


class ConfigError(UserError, ValueError):
    """An option or config field has a bad name or value."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder the command needs is not there (a run, a cache file, a backbone)."""


class NonFiniteError(UserError, FloatingPointError):
    """A score, weight, feature or loss is NaN or infinite: a defect that must stop the command,
    never be ranked or averaged (a NaN target would otherwise count as a hit)."""


class DivergedError(NonFiniteError):
    """The training loss turned NaN or infinite: an outcome of the training settings (a learning
    rate too high), which a tuner counts against the trial; other `NonFiniteError`s are defects
    of the inputs and stop any command."""


class CorruptFileError(UserError, ValueError):
    """A file the command reads exists but cannot be used: empty, truncated, not UTF-8, not
    valid JSON or safetensors, or inconsistent with its neighbours; the message names it."""


class NoResultError(UserError, RuntimeError):
    """A command ran but has nothing to give: a study none of whose trials completed (all pruned,
    diverged or failed, or stopped by --timeout before the first one finished)."""
