"""An exclusive advisory lock on a file (POSIX `flock`), released when its holder exits or dies.

Why: several processes share work through folders on one machine (toy data generation, the
runs of an experiment table). A kernel lock needs no heartbeat and no cleanup: a process killed
with SIGKILL releases it at once."""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

__all__ = ["file_lock"]


@contextlib.contextmanager
def file_lock(path: Path, *, blocking: bool = True) -> Iterator[bool]:
    """Hold an exclusive lock on `path` (created if missing) for the `with` block; yields whether
    it is held. Blocking waits for the other holder; non-blocking yields False at once when
    another process holds it. Where `fcntl` does not exist (Windows) it yields True: callers work
    as one process."""
    try:
        import fcntl
    except ImportError:
        yield True
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX if blocking else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
