"""The one error class the command line prints as a single line.

Anything a user can fix (a bad option, a bad data file, a missing run or backbone) raises a
`UserError`; everything else is a bug and keeps its traceback. Subclasses that also derive
from a built-in (`ConfigError` is a `ValueError`) keep library callers' `except` clauses working.
"""
from __future__ import annotations

__all__ = ["UserError", "ConfigError", "MissingFileError"]


class UserError(Exception):
    """Bad input that the user can fix; `str()` is the whole message, one line."""


class ConfigError(UserError, ValueError):
    """An option or config field has a bad name or value."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder the command needs is not there (a run, a cache file, a backbone)."""
