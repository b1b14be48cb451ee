"""Atomic file writes: a temporary file in the target folder, fsync, then rename."""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from crossan.zoo.core.errors import UserError

__all__ = ["WriteFailedError", "atomic_write", "write_failure"]

FULL_DISK_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}
FULL_DISK_WORDS = ("No space left", "File too large", "Disk quota exceeded", "os error 28", "os error 27")


class WriteFailedError(UserError, OSError):
    """A file could not be written because the disk (or the process's file-size limit, or a
    quota) is full; what was there before is kept."""


def write_failure(error: BaseException, path: Path) -> WriteFailedError | None:
    """A one-line `WriteFailedError` for `path` when `error` says the disk is full (an OSError,
    or a library error that wraps one, such as safetensors'); None for any other error."""
    if isinstance(error, WriteFailedError):
        return error
    text = str(error)
    if getattr(error, "errno", None) in FULL_DISK_ERRNOS or any(word in text for word in FULL_DISK_WORDS):
        errno = getattr(error, "errno", None)
        reason = os.strerror(errno) if errno else " ".join(text.split())
        return WriteFailedError(
            f"{path}: could not be written ({reason}); the previous file, if any, is kept; "
            "free space and run the command again"
        )
    return None


def atomic_write(path: Path, write: Callable[[str], object]) -> None:
    """Call `write(temporary_path)`, fsync, then rename over `path`: readers never see half a file,
    and a crash leaves at most a hidden `.tmp` file that nothing loads. A full disk is one line
    (`WriteFailedError`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(descriptor)
    try:
        write(temporary)
        os.chmod(temporary, 0o644)  # mkstemp makes the file private; results are meant to be shared
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        Path(temporary).unlink(missing_ok=True)
        failure = write_failure(error, path)
        if failure is not None:
            raise failure from None
        raise
