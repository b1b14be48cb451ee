"""An exclusive advisory lock on a file (the `filelock` package), released when its holder exits or dies.

Why: several processes share work through folders on one machine (toy data generation, the
runs of an experiment table). A kernel lock (`flock` on POSIX, `LockFileEx` on Windows) needs no
heartbeat and no cleanup: a process killed with SIGKILL releases it at once."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock, Timeout

__all__ = ["file_lock"]


@contextlib.contextmanager
def file_lock(path: Path, *, blocking: bool = True) -> Iterator[bool]:
    """Hold an exclusive lock on `path` (created if missing) for the `with` block; yields whether
    it is held. Blocking waits for the other holder; non-blocking yields False at once when
    another process (or another `file_lock` of this one) holds it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path)
    try:
        lock.acquire(blocking=blocking)
    except Timeout:
        yield False
        return
    try:
        yield True
    finally:
        lock.release()
