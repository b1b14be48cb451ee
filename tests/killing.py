"""Killing real training processes (tests' helper): SIGKILL at a point read from their output."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (Linux /proc), children first."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = [int(c) for c in (task / "children").read_text().split()]
        except OSError:  # the task ended meanwhile
            continue
        for child in children:
            found += [child, *descendants(child)]
    return found


def kill_when(command: list[str], should_kill: Callable[[list[str]], bool]) -> list[str]:
    """Run `command` and SIGKILL it and every process below it at once (a torchrun launcher and
    its workers, which run in sessions of their own, or a single process) as soon as
    `should_kill(stderr lines so far)` holds, polled every few milliseconds while a thread
    collects the lines; returns the lines."""
    process = subprocess.Popen(command, cwd=PROJECT, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(line.strip() for line in process.stderr), daemon=True)
    reader.start()
    try:
        while process.poll() is None:
            if should_kill(list(lines)):
                for pid in [process.pid, *descendants(process.pid)]:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                break
            time.sleep(0.005)
    finally:
        process.wait(timeout=600)
        reader.join(timeout=10)
    assert process.returncode == -signal.SIGKILL, f"the run ended before the kill point:\n{lines[-10:]}"
    return lines
