"""Errors about input data.

A `DataError` always renders as one line that names the offending file (and line, when
known), so a user can open the file and fix it without reading a traceback.
"""

from __future__ import annotations

from pathlib import Path

from crossan.zoo.core.errors import UserError


class DataError(UserError):
    """Bad or missing input data; `str()` is ``"<path>:<line>: <message>"``.

    The path and line parts are left out when unknown. The arguments are kept in
    `args` so the error survives pickling (e.g. across DataLoader workers).
    """

    def __init__(self, message: str, path: str | Path | None = None, line: int | None = None) -> None:
        super().__init__(message, path, line)
        self.message = message
        self.path = Path(path) if path is not None else None
        self.line = line

    def __str__(self) -> str:
        if self.path is None:
            return self.message
        if self.line is None:
            return f"{self.path}: {self.message}"
        return f"{self.path}:{self.line}: {self.message}"
