"""Atomic file writes: a temporary file in the target folder, fsync, then rename."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

__all__ = ["atomic_write"]


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Call `write(temporary_path)`, fsync, then rename over `path`: readers never see half a file,
    and a crash leaves at most a hidden `.tmp` file that nothing loads."""
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
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
