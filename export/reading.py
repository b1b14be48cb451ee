"""Reading an export folder's files so that every failure is one line naming the file.

The serving side (`crossan.export.serve`, `content`, `preprocessing`, `item_table`) opens its
files through these helpers: a missing file raises `MissingFileError`; an empty, truncated or
foreign one raises `ExportFileError`, as does a file whose size or sha256 differs from what the
export recorded in `validation.json` (`RECORDS_KEY`). Exports without such a record (older ones,
or folders assembled by hand) are read without that check. Torch-free, like the rest of serving.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

from crossan.export.errors import ExportFileError
from crossan.export.spec import SPEC_METADATA_KEY, ExportSpec
from crossan.zoo.core.errors import MissingFileError

__all__ = [
    "REPORT_FILE",
    "RECORDS_KEY",
    "REEXPORT",
    "PARTIAL",
    "OLD",
    "describe",
    "one_line",
    "require_file",
    "read_json",
    "file_record",
    "read_records",
    "check_records",
    "open_session",
    "missing_folder_error",
]

REPORT_FILE = "validation.json"
RECORDS_KEY = "file_hashes"
"""Entry of `validation.json`: `{file name: {"bytes": size, "sha256": hex digest}}`."""
REEXPORT = "re-export with `python -m crossan.export --run <run>`"
PARTIAL = ".partial-"
OLD = ".old-"
"""Infixes of the hidden folders beside an export folder DIR: `.DIR.partial-*` is an export being
written (or one whose process was killed), `.DIR.old-*` the previous export while it is swapped out."""
UNREADABLE_MODEL = (
    ort_state.InvalidProtobuf,
    ort_state.InvalidArgument,
    ort_state.InvalidGraph,
    ort_state.NoModel,
    ort_state.Fail,
    ort_state.NotImplemented,
)
"""What onnxruntime raises for a file that is not a model it can load (all plain `Exception`s)."""
HASH_BLOCK = 1 << 24


def describe(labels: Sequence[object], limit: int = 10) -> str:
    """The first `limit` labels, comma-separated, and how many more: messages stay one short line."""
    shown = ", ".join(str(label) for label in labels[:limit])
    return shown + (f" and {len(labels) - limit} more" if len(labels) > limit else "")


def one_line(error: BaseException) -> str:
    """A library error's message squeezed onto one line."""
    return " ".join(str(error).split())


def require_file(path: Path, hint: str = REEXPORT) -> Path:
    """`path`, if it is a regular file with content; a missing or empty one raises naming it."""
    if not path.is_file():
        raise MissingFileError(f"{path}: missing; {hint}")
    if path.stat().st_size == 0:
        raise ExportFileError(f"{path}: empty; {hint}")
    return path


def read_json(path: Path, hint: str = REEXPORT) -> Any:
    """The JSON document in `path`; missing, empty or malformed raises naming the file."""
    require_file(path, hint)
    try:
        return json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ExportFileError(f"{path}: not valid JSON ({one_line(error)}); {hint}") from error


def file_record(path: Path) -> dict[str, Any]:
    """What the export records about a file it wrote: its size and sha256."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(HASH_BLOCK):
            digest.update(block)
    return {"bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def read_records(export_dir: Path) -> dict[str, dict[str, Any]]:
    """The file records of `validation.json` in `export_dir`; empty when there is no report or it
    records no files (exports written before records were kept)."""
    path = export_dir / REPORT_FILE
    if not path.exists():
        return {}
    report = read_json(path)
    records = report.get(RECORDS_KEY, {}) if isinstance(report, dict) else None
    if not isinstance(records, dict) or not all(
        isinstance(r, dict) and isinstance(r.get("bytes"), int) and isinstance(r.get("sha256"), str)
        for r in records.values()
    ):
        raise ExportFileError(f"{path}: {RECORDS_KEY!r} is not a map of file name to bytes and sha256; {REEXPORT}")
    return records


def check_records(export_dir: Path, records: Mapping[str, Mapping[str, Any]], names: Collection[str]) -> None:
    """Raise `ExportFileError` for the first of `names` whose size or sha256 differs from its
    record: the file was changed, truncated or swapped for another export's after the export.
    Unrecorded and missing names are left to the loaders."""
    for name in names:
        path = export_dir / name
        if name not in records or not path.is_file():
            continue
        recorded, found = records[name], file_record(path)
        for key in ("bytes", "sha256"):
            if found[key] != recorded[key]:
                raise ExportFileError(
                    f"{path}: {key} {found[key]}, but {REPORT_FILE} records {recorded[key]}: "
                    f"the file changed after the export; {REEXPORT}"
                )


def open_session(
    path: Path,
    providers: Sequence[str | tuple[str, dict[str, str]]],
    name: str,
    options: ort.SessionOptions | None = None,
) -> tuple[ort.InferenceSession, ExportSpec]:
    """An onnxruntime session of the exported graph `name` at `path`, with the spec it carries.
    `options` (thread counts, say) are the session's; None is onnxruntime's defaults.

    A missing, empty or unloadable file, one without an export spec, or one holding another
    graph (an item encoder saved as the user encoder, say) raises naming the file."""
    require_file(path)
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=list(providers))
    except UNREADABLE_MODEL as error:
        raise ExportFileError(f"{path}: not a readable ONNX model ({one_line(error)}); {REEXPORT}") from error
    metadata = session.get_modelmeta().custom_metadata_map.get(SPEC_METADATA_KEY)
    try:
        spec = ExportSpec.from_json(metadata)
    except (TypeError, KeyError, ValueError, AttributeError) as error:
        raise ExportFileError(
            f"{path}: no readable export spec in its {SPEC_METADATA_KEY!r} metadata, so not "
            f"written by `python -m crossan.export`; {REEXPORT}"
        ) from error
    if spec.name != name:
        raise ExportFileError(f"{path}: holds the {spec.name} graph, not the {name}; {REEXPORT}")
    return session, spec


def missing_folder_error(export_dir: Path) -> MissingFileError:
    """The error for an export folder that is not there, pointing at the previous export when a
    swap was cut off between its two renames (`.DIR.old-*` beside it, see `crossan.export.publishing`)."""
    left = sorted(export_dir.parent.glob(f".{export_dir.name}{OLD}*")) if export_dir.parent.is_dir() else []
    if left:
        return MissingFileError(
            f"{export_dir}: missing, but {left[-1].name} beside it holds the previous export "
            f"(an export was stopped while swapping it in): rename it to {export_dir.name}, "
            f"or {REEXPORT}"
        )
    return MissingFileError(
        f"{export_dir}: no export folder there; write one with "
        f"`python -m crossan.export --run <run> --out {export_dir}`"
    )
