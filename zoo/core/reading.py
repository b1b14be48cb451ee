"""Reading the project's own files (JSON, safetensors) with one-line errors that name the file.

A run folder, a checkpoint or a recipe can be damaged by a full disk, a copy cut short or a
hand edit. The libraries then raise `JSONDecodeError`, `UnicodeDecodeError` or a
`SafetensorError` without the file's path; these readers turn every such failure into a
`MissingFileError` or a `CorruptFileError` whose one line names the file and what is wrong.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from crossan.zoo.core.errors import CorruptFileError, MissingFileError

__all__ = ["read_text", "read_json", "read_json_object", "require_keys", "load_tensors"]


def read_text(path: Path, empty: str = "empty") -> str:
    """The UTF-8 text of `path`; a missing file, a folder, bytes that are not UTF-8 or a blank
    file (`empty` says what the line calls it) is one line naming the file."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise MissingFileError(f"{path}: missing") from None
    except IsADirectoryError:
        raise CorruptFileError(f"{path}: is a folder, expected a file") from None
    except UnicodeDecodeError as error:
        raise CorruptFileError(f"{path}: not UTF-8 text (byte {error.start})") from None
    if not text.strip():
        raise CorruptFileError(f"{path}: {empty}")
    return text


def read_json(path: Path) -> Any:
    """The JSON value in `path`; a missing, empty, non-UTF-8 or malformed file is one line."""
    text = read_text(path, "empty, expected JSON")
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise CorruptFileError(
            f"{path}: not valid JSON (line {error.lineno}, column {error.colno}: "
            f"{error.msg}); the file is truncated or damaged"
        ) from None


def read_json_object(path: Path, keys: Iterable[str] = ()) -> dict[str, Any]:
    """A JSON object from `path` that holds at least `keys` (one line naming the missing ones)."""
    value = read_json(path)
    if not isinstance(value, dict):
        raise CorruptFileError(f"{path}: expected a JSON object, found {type(value).__name__}")
    require_keys(value, keys, str(path))
    return value


def require_keys(value: dict[str, Any], keys: Iterable[str], where: str) -> None:
    """One line naming the `keys` missing from `value` (read from `where`)."""
    missing = [key for key in keys if key not in value]
    if missing:
        raise CorruptFileError(
            f"{where}: missing {', '.join(repr(key) for key in missing)}; the file is damaged or from another program"
        )


def load_tensors(path: Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file; a missing, empty, truncated or foreign file is one line."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path}: missing")
    try:
        return load_file(path, device=device)
    except (SafetensorError, OSError) as error:
        detail = " ".join(str(error).split()) or type(error).__name__
        raise CorruptFileError(f"{path}: not a readable safetensors file ({detail})") from None
