"""The benchmarks' one timing loop: untimed warm-up calls, then the median of timed ones (standard library only).

The scripts import it as a sibling (`from timing import median_seconds`): Python puts a script's
folder first on `sys.path`."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Hashable, Mapping
from typing import TypeVar

__all__ = ["interleaved_medians", "median_seconds", "timed_call"]

Key = TypeVar("Key", bound=Hashable)
Result = TypeVar("Result")


def timed_call(call: Callable[[], Result], synchronize: Callable[[], None] | None = None) -> tuple[Result, float]:
    """The result of `call()` and the seconds it took; `synchronize` (e.g. `torch.cuda.synchronize`)
    runs before the clock starts and before it stops, so that queued GPU work is counted."""
    if synchronize is not None:
        synchronize()
    started = time.perf_counter()
    result = call()
    if synchronize is not None:
        synchronize()
    return result, time.perf_counter() - started


def interleaved_medians(
    cases: Mapping[Key, Callable[[], object]],
    repeats: int,
    warmup: int = 1,
    synchronize: Callable[[], None] | None = None,
) -> dict[Key, float]:
    """Median seconds per call of each case over `repeats` timed rounds after `warmup` untimed ones
    (allocators, caches, optimiser state). The cases take turns round by round, so that a change
    in the machine's load hits every case alike."""
    for _ in range(warmup):
        for call in cases.values():
            call()
    seconds: dict[Key, list[float]] = {key: [] for key in cases}
    for _ in range(repeats):
        for key, call in cases.items():
            seconds[key].append(timed_call(call, synchronize)[1])
    return {key: statistics.median(values) for key, values in seconds.items()}


def median_seconds(
    call: Callable[[], object], repeats: int, warmup: int = 1, synchronize: Callable[[], None] | None = None
) -> float:
    """Median seconds of `call()` over `repeats` timed calls after `warmup` untimed ones."""
    return interleaved_medians({"call": call}, repeats, warmup, synchronize)["call"]
