"""Writing an export beside its folder and swapping it in, so the folder never mixes two exports.

`python -m crossan.export --out DIR` writes everything into a hidden folder `.DIR.partial-XXXX`
beside DIR (same parent, so renames stay on one file system), validates it there, fsyncs it, and
only then swaps it in:

1. DIR, if it exists, is renamed to `.DIR.old-XXXX`;
2. `.DIR.partial-XXXX` is renamed to DIR;
3. `.DIR.old-XXXX` is deleted.

Each rename is atomic, so at every moment DIR is either the whole previous export or the whole
new one. A failure before step 1 (a validation mismatch, a full disk, Ctrl-C) deletes the partial
folder and leaves DIR as it was; a failure at step 2 renames the old folder back. Recovery rule
for a process killed outright: a `.DIR.partial-*` folder is an unfinished export that nothing
loads, delete it; if DIR is missing and `.DIR.old-*` exists, the kill came between steps 1 and 2,
and that folder is the previous export, complete: rename it back to DIR (or export again).
`OnnxRecommender` names it when DIR is missing.

DIR is replaced only when it holds nothing but files an export writes, so a mistyped `--out`
never deletes anything else.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from crossan.export.ann_index import INDEX_FILE, SIDECAR_FILE
from crossan.export.content import ITEM_ENCODER_FILE
from crossan.export.errors import ExportWriteError
from crossan.export.item_table import TABLE_FILE
from crossan.export.preprocessing import AUDIO_FILTERS_FILE, PREPROCESSING_FILE, TOKENIZER_FILE
from crossan.export.reading import OLD, PARTIAL, REPORT_FILE, describe
from crossan.export.serve import USER_ENCODER_FILE
from crossan.export.variants import VARIANT_FILE, VARIANT_OPTIONS, variant_file
from crossan.zoo.core.errors import ConfigError, UserError

__all__ = ["EXPORT_FILES", "is_export_file", "check_replaceable", "publish", "staged_export"]

EXPORT_FILES = frozenset(
    {
        ITEM_ENCODER_FILE,
        USER_ENCODER_FILE,
        "item_encoder.pt",
        "user_encoder.pt",
        TABLE_FILE,
        REPORT_FILE,
        PREPROCESSING_FILE,
        TOKENIZER_FILE,
        AUDIO_FILTERS_FILE,
        INDEX_FILE,
        SIDECAR_FILE,
        *(
            variant_file(name, variant)
            for name in (ITEM_ENCODER_FILE, USER_ENCODER_FILE)
            for variant in VARIANT_OPTIONS
        ),
    }
)
BACKBONE_FILE = re.compile(r"[a-z]+_backbone\.onnx")
"""A float32 backbone; its optimised and int8 files match `crossan.export.variants.VARIANT_FILE`."""
FOLDER_MODE = 0o755
"""An export folder is meant to be read by serving processes of other users (mkdtemp makes it private)."""


def is_export_file(name: str) -> bool:
    """Whether an export writes a file of this name (the index files and the graphs' optimised and
    int8 variants included)."""
    return name in EXPORT_FILES or any(pattern.fullmatch(name) for pattern in (BACKBONE_FILE, VARIANT_FILE))


def check_replaceable(out_dir: Path) -> None:
    """Raise `ConfigError` unless `out_dir` is free or an export folder: a file there, or a folder
    holding anything an export does not write (a mistyped `--out`), is never replaced."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(
            f"{out_dir}: a file is there, not a folder; the export writes a folder "
            f"(give --out a new folder or an earlier export)"
        )
    if out_dir.is_dir():
        foreign = sorted(
            p.name
            for p in out_dir.iterdir()
            if not p.name.startswith(".") and not (p.is_file() and is_export_file(p.name))
        )
        if foreign:
            raise ConfigError(
                f"{out_dir} holds {describe(foreign, 5)}, which no export writes: not replacing it "
                f"(give --out a new folder or an earlier export)"
            )


def _sync_folder(folder: Path) -> None:
    """fsync a folder's entry list, so renames in it survive a power cut."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _sync_tree(folder: Path) -> None:
    """fsync every file of `folder`, then the folder itself."""
    for path in folder.iterdir():
        if path.is_file():
            with open(path, "rb+") as handle:
                os.fsync(handle.fileno())
    _sync_folder(folder)


def publish(staging: Path, out_dir: Path) -> None:
    """Swap the finished export `staging` in as `out_dir` (the module docstring gives the steps)."""
    check_replaceable(out_dir)  # again: the folder may have changed during a long export
    _sync_tree(staging)
    os.chmod(staging, FOLDER_MODE)
    if out_dir.is_dir():
        old = out_dir.with_name(staging.name.replace(PARTIAL, OLD, 1))
        os.rename(out_dir, old)
        try:
            os.rename(staging, out_dir)
        except BaseException:
            os.rename(old, out_dir)
            raise
        _sync_folder(out_dir.parent)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(staging, out_dir)
        _sync_folder(out_dir.parent)


@contextmanager
def staged_export(out_dir: Path) -> Iterator[Path]:
    """A new hidden folder beside `out_dir` to write an export into; it replaces `out_dir` when the
    block ends without an error (`publish`) and is deleted when it raises, `out_dir` untouched.

    A failed write or rename (a full disk, a file-size limit, no permission), or any other
    `OSError` that is not already a user error, comes out as one `ExportWriteError` naming the
    file; other errors pass through as they are.
    """
    staging: Path | None = None
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}{PARTIAL}", dir=out_dir.parent))
        yield staging
        publish(staging, out_dir)
    except OSError as error:
        if isinstance(error, UserError):
            raise
        raise ExportWriteError(
            f"the export to {out_dir} failed ({error}); "
            f"{'it is unchanged' if out_dir.exists() else 'nothing was written there'}"
        ) from error
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
