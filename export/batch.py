"""Top-k recommendations for every user of a users file, written to one Parquet file (the nightly batch).

    python -m crossan.export.batch --export weights/<run>/export --users users.tsv --k 100 --out recs.parquet
    python -m crossan.export.batch ... --shard 1/4          # the second of four processes
    python -m crossan.export.batch ... --index faiss        # approximate top-k (crossan.export.ann_index)
    python -m crossan.export.batch ... --threads 2          # ONNX Runtime's (and FAISS's) threads, else one a core

Input: one user a line, `user<TAB>item item ...` with the history oldest first (the Amazon layout's
`users.tsv`); blank lines are skipped. The file is streamed twice, never held whole: a first pass
checks every line (two tab-separated fields, a user id, no user id twice) and counts the users for
the progress bar, so a bad line stops the command before anything is written; the second ranks.
Item ids the export does not know are dropped from a history and counted; a user left with no known
item gets no rows and is counted as skipped; the counts are kept in the progress record and printed.

Output: columns `user` (string), `rank` (int32, 1 = best), `item` (string), `score` (float32, as
`OnnxRecommender.recommend_scored`); min(k, items not in the history) rows per user, users in file
order, one row group per batch of users. Memory: one batch of users and its rows (with the exact
index, the batch's scores over the whole catalogue and a mask of its histories, 5 bytes per user
and item), plus 9 bytes per user for the repeated-id check.

Resume: each batch is written to its own part file, `.OUT.parts/part-NNNNN.parquet` (a Parquet file
cannot be appended to), and then a progress record, `.OUT.progress.json`, is replaced; both writes
are atomic. The record holds the settings (export folder and the sha256 of its user encoder and item
table, users file with its size and sha256, k, shard, index), the position in the users file of the
first user not done, and the parts written. A process killed at any point restarts with the same
arguments after the last recorded part (a part written but not yet recorded is written again, over
itself); other arguments, or a changed users file or export, are refused. When all users are done,
the parts are copied row group by row group into OUT (atomically), the record is marked finished and
the parts are deleted; running the command again then says so. `--batch-size` and `--threads` may
change on resume.

Shards: `--shard I/N` takes the users whose position in the file (0-based, blank lines not counted)
is I modulo N, so N processes with I = 0 .. N-1 cover every user once, in shards as equal as can be.
Every shard reads and checks the whole file, so all of them agree on its faults.

Torch-free, like the rest of serving (tests/test_batch_recommendations.py checks it).
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
import shutil
from array import array
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from rich.console import Console

from crossan.export.batch_command import LAYOUT, main
from crossan.export.item_table import TABLE_FILE
from crossan.export.reading import file_record, one_line
from crossan.export.serve import USER_ENCODER_FILE, OnnxRecommender
from crossan.zoo.cli.options import run_cli
from crossan.zoo.core.atomic import atomic_write
from crossan.zoo.core.errors import ConfigError, CorruptFileError, UserError
from crossan.zoo.core.file_lock import file_lock
from crossan.zoo.core.progress import progress_bar
from crossan.zoo.data.errors import DataError
from crossan.zoo.data.text_files import iter_lines

__all__ = [
    "SCHEMA",
    "Shard",
    "UserLine",
    "BatchJob",
    "check_positive_option",
    "OutputFiles",
    "JobProgress",
    "read_users",
    "check_users",
    "run_job",
    "main",
]

SCHEMA = pa.schema([("user", pa.string()), ("rank", pa.int32()), ("item", pa.string()), ("score", pa.float32())])


@dataclass(frozen=True)
class Shard:
    """`I/N`: the users at positions p (0-based, in file order) with p % N == I."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count:
            raise ConfigError(f"--shard I/N needs 0 <= I < N, got {self}")

    @classmethod
    def parse(cls, text: str) -> Shard:
        """`"I/N"` -> Shard(I, N); anything else is a `ConfigError`."""
        match = re.fullmatch(r"(\d+)/(\d+)", text.strip())
        if match is None:
            raise ConfigError(f"--shard expects I/N with 0 <= I < N (e.g. 0/4), got {text!r}")
        return cls(int(match[1]), int(match[2]))

    def takes(self, position: int) -> bool:
        return position % self.count == self.index

    def users_before(self, position: int) -> int:
        """How many of the positions 0 .. position - 1 are this shard's."""
        return len(range(self.index, position, self.count))

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


class UserLine(NamedTuple):
    """One user of a users file: position among its users (0-based), line number, id, history (oldest first)."""

    position: int
    line: int
    user: str
    items: list[str]


def read_users(path: Path) -> Iterator[UserLine]:
    """The users of a `user<TAB>item item ...` file, streamed. A line without exactly one tab or with an
    empty user id is a `DataError` naming the file and line, as are a missing, empty, truncated or
    non-UTF-8 file (`crossan.zoo.data.text_files.iter_lines`). A user with no items is yielded as such."""
    position = 0
    for line, text in iter_lines(path):
        if not text.strip():
            continue
        fields = text.split("\t")
        if len(fields) != 2:
            raise DataError(f"expected {LAYOUT!r}, got {len(fields)} tab-separated field(s)", path, line)
        user = fields[0].strip()
        if not user:
            raise DataError(f"expected {LAYOUT!r}, got an empty user id", path, line)
        yield UserLine(position, line, user, fields[1].split())
        position += 1


def check_users(path: Path) -> int:
    """Read the whole users file once and return its number of users; the first bad line (`read_users`)
    or repeated user id is a `DataError` naming the file and line.

    Repeats are found from a 64-bit hash per user (about 9 bytes each, not the ids); hashes that
    repeat send a second pass after their ids, which tells a repeated id from two ids with one hash."""
    hashes = array("q", (hash(entry.user) for entry in read_users(path)))
    ordered = np.frombuffer(hashes, dtype=np.int64)
    ordered.sort()  # in place: the hashes are not needed in file order
    candidates = set(ordered[1:][ordered[1:] == ordered[:-1]].tolist())
    if candidates:
        first_line: dict[str, int] = {}
        for entry in read_users(path):
            if hash(entry.user) in candidates:
                if entry.user in first_line:
                    raise DataError(
                        f"user {entry.user!r} appears twice (first on line {first_line[entry.user]})", path, entry.line
                    )
                first_line[entry.user] = entry.line
    return len(hashes)


@dataclass(frozen=True)
class BatchJob:
    """What to rank (the export is the recommender's): the users file, `k`, the output file, this
    process's shard, and the users ranked at a time (one row group each)."""

    users: Path
    k: int
    out: Path
    shard: Shard = Shard()
    batch_size: int = 1024

    def __post_init__(self) -> None:
        for name in ("k", "batch_size"):
            check_positive_option(name, getattr(self, name))


def check_positive_option(name: str, value: object) -> None:
    """The command's option `name` (`batch_size` is `--batch-size`) must be a positive integer: one line if not."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class OutputFiles:
    """The output file and what stands beside it while it is written, hidden (a leading dot) so that a
    folder of outputs reads as a Parquet data set: the progress record, the part files, the lock."""

    out: Path

    @property
    def record(self) -> Path:
        return self.out.with_name(f".{self.out.name}.progress.json")

    @property
    def parts(self) -> Path:
        return self.out.with_name(f".{self.out.name}.parts")

    @property
    def lock(self) -> Path:
        return self.out.with_name(f".{self.out.name}.lock")

    def part(self, number: int) -> Path:
        return self.parts / f"part-{number:05d}.parquet"

    def start_over(self) -> str:
        """The advice for a user who wants to start from scratch."""
        return f"delete {self.record} and {self.parts} (and {self.out}, if there) to start over"


@dataclass
class JobProgress:
    """The progress record: settings, how far the users file is done, and what was written and skipped."""

    settings: dict[str, Any]
    next_user: int = 0  # position in the users file (every shard's users counted) of the first user not done
    parts: int = 0
    users_ranked: int = 0
    rows: int = 0
    users_skipped: int = 0  # no item of the export in their history
    unknown_ids: int = 0  # item ids dropped from histories
    users_with_unknown_ids: int = 0
    finished: bool = False

    def save(self, path: Path) -> None:
        atomic_write(path, lambda temporary: Path(temporary).write_text(json.dumps(asdict(self), indent=2) + "\n"))

    @classmethod
    def load(cls, files: OutputFiles) -> JobProgress:
        """The record at `files.record`; one that does not parse as this class is a `CorruptFileError`."""
        try:
            data = json.loads(files.record.read_text(encoding="utf-8"))
            progress = cls(**data)
        except (UnicodeDecodeError, json.JSONDecodeError, TypeError) as error:
            problem = one_line(error)
        else:
            blank = cls(settings={})
            wrong = [f.name for f in fields(cls) if type(getattr(progress, f.name)) is not type(getattr(blank, f.name))]
            if not wrong:
                return progress
            problem = f"wrong type for {', '.join(wrong)}"
        raise CorruptFileError(
            f"{files.record}: not a progress record of this command ({problem}); {files.start_over()}"
        )


@dataclass
class _Batch:
    """Users read from positions `start` .. `end` - 1: this shard's users with a known item, their known
    histories, and the counts of what was dropped or skipped."""

    start: int
    end: int
    users: list[str] = field(default_factory=list)
    histories: list[list[str]] = field(default_factory=list)
    shard_users: int = 0  # this shard's users read, ranked or skipped: the progress bar's step
    skipped: int = 0
    unknown_ids: int = 0
    users_with_unknown_ids: int = 0


def _batches(
    lines: Iterator[UserLine], start: int, shard: Shard, size: int, recommender: OnnxRecommender
) -> Iterator[_Batch]:
    """The shard's users from position `start` on, `size` rankable users a batch; the last batch also
    carries the users read after the last rankable one (its `users` may be empty)."""
    batch = _Batch(start, start)
    for entry in lines:
        if entry.position < start:
            continue
        batch.end = entry.position + 1
        if not shard.takes(entry.position):
            continue
        batch.shard_users += 1
        known = [item for item in entry.items if item in recommender]
        if len(known) < len(entry.items):
            batch.unknown_ids += len(entry.items) - len(known)
            batch.users_with_unknown_ids += 1
        if not known:
            batch.skipped += 1
            continue
        batch.users.append(entry.user)
        batch.histories.append(known)
        if len(batch.users) == size:
            yield batch
            batch = _Batch(batch.end, batch.end)
    if batch.end > batch.start:
        yield batch


def _table(users: list[str], ranked: list[list[tuple[str, float]]]) -> pa.Table:
    """The rows of `users` with their `(item, score)` lists, best first, in `SCHEMA`."""
    return pa.Table.from_arrays(
        [
            pa.array([user for user, items in zip(users, ranked, strict=True) for _ in items], pa.string()),
            pa.array([rank for items in ranked for rank in range(1, len(items) + 1)], pa.int32()),
            pa.array([item for items in ranked for item, _ in items], pa.string()),
            pa.array([score for items in ranked for _, score in items], pa.float32()),
        ],
        schema=SCHEMA,
    )


def _write_table(table: pa.Table, path: str) -> None:
    """`table` as a Parquet file of one row group."""
    pq.write_table(table, path, row_group_size=max(1, table.num_rows))


def _merge(files: OutputFiles, parts: int) -> None:
    """Copy the part files, in order, into `files.out` (written atomically), one row group per part: one
    part in memory at a time."""

    def write(path: str) -> None:
        with pq.ParquetWriter(path, SCHEMA) as writer:
            for number in range(parts):
                table = pq.ParquetFile(files.part(number)).read()
                writer.write_table(table, row_group_size=max(1, table.num_rows))

    atomic_write(files.out, write)


def _settings(recommender: OnnxRecommender, job: BatchJob) -> dict[str, Any]:
    """What an output depends on; a restart must find the same."""
    export = recommender.export_dir
    return {
        "export": str(export.resolve()),
        "export_sha256": {name: file_record(export / name)["sha256"] for name in (USER_ENCODER_FILE, TABLE_FILE)},
        "index": "exact" if recommender.ann_index is None else "faiss",
        "users": str(job.users.resolve()),
        "users_file": file_record(job.users),
        "k": job.k,
        "shard": str(job.shard),
    }


def _differences(recorded: dict[str, Any], current: dict[str, Any]) -> str:
    """The settings that differ, in words."""
    changed = [key for key in current if recorded.get(key) != current[key]]
    return "; ".join(
        f"{key} changed"
        if isinstance(current[key], dict)  # file sizes and hashes: the file changed
        else f"{key} was {recorded.get(key)!r}, is now {current[key]!r}"
        for key in changed
    )


def _open_record(files: OutputFiles, settings: dict[str, Any]) -> JobProgress | None:
    """The progress record of an output started with `settings`; None when there is none yet. A record
    of other settings, a finished record whose output is gone, or an output or parts folder with no
    record are each a one-line error."""
    if not files.record.exists():
        for path in (files.out, files.parts):
            if path.exists():
                raise ConfigError(
                    f"{path} exists but {files.record} does not: not written by this command, or its progress "
                    f"record was deleted; delete it or choose another --out"
                )
        return None
    progress = JobProgress.load(files)
    changed = _differences(progress.settings, settings)
    if changed:
        raise ConfigError(
            f"{files.out} was started with other arguments or inputs ({changed}): run it with the recorded ones "
            f"(in {files.record}), or {files.start_over()}"
        )
    if progress.finished and not files.out.is_file():
        raise CorruptFileError(f"{files.record} says {files.out} is finished, but it is missing; {files.start_over()}")
    return progress


@contextlib.contextmanager
def _progress_bar(console: Console | None, total: int, done: int) -> Iterator[Callable[[int], None]]:
    """A transient bar over this shard's users (none without a console); yields the function that advances it."""
    if console is None:
        yield lambda _: None
        return
    with progress_bar("users", total, console, done) as advance:
        yield advance


def run_job(recommender: OnnxRecommender, job: BatchJob, console: Console | None = None) -> JobProgress:
    """Rank the job's users with `recommender` into `job.out`, resuming a run of the same settings that
    was stopped, and return the finished progress record. `console`: a progress bar and a line on
    resuming. One process at a time per output (a lock beside it); another one is a `UserError`."""
    files = OutputFiles(job.out)
    with file_lock(files.lock, blocking=False) as held:
        if not held:
            raise UserError(f"{job.out}: another process is writing it (it holds {files.lock})")
        if not job.users.is_file():  # before it is hashed; the same words as its reader's
            raise DataError("file not found" if not job.users.exists() else "not a regular file", job.users)
        settings = _settings(recommender, job)
        progress = _open_record(files, settings)
        if progress is not None and progress.finished:
            if console is not None:
                console.print(f"{job.out} is already finished ({files.record}); nothing to do", soft_wrap=True)
        else:
            total = check_users(job.users)
            if progress is None:
                progress = JobProgress(settings)
                progress.save(files.record)
            elif console is not None:
                console.print(
                    f"resuming {job.out}: {job.shard.users_before(progress.next_user)} of "
                    f"{job.shard.users_before(total)} users of shard {job.shard} done",
                    soft_wrap=True,
                )
            _rank(recommender, job, files, progress, total, console)
        shutil.rmtree(files.parts, ignore_errors=True)  # also what a kill after the record said finished left
    return progress


def _rank(
    recommender: OnnxRecommender,
    job: BatchJob,
    files: OutputFiles,
    progress: JobProgress,
    total: int,
    console: Console | None,
) -> None:
    """Rank from `progress.next_user` on, a part file and a progress record per batch, then merge the parts."""
    files.parts.mkdir(exist_ok=True)
    shard = job.shard
    batches = _batches(read_users(job.users), progress.next_user, shard, job.batch_size, recommender)
    with _progress_bar(console, shard.users_before(total), shard.users_before(progress.next_user)) as advance:
        for batch in batches:
            if batch.users:
                table = _table(batch.users, recommender.recommend_scored(batch.histories, job.k))
                atomic_write(files.part(progress.parts), functools.partial(_write_table, table))
                progress.parts += 1
                progress.users_ranked += len(batch.users)
                progress.rows += table.num_rows
            progress.next_user = batch.end
            progress.users_skipped += batch.skipped
            progress.unknown_ids += batch.unknown_ids
            progress.users_with_unknown_ids += batch.users_with_unknown_ids
            progress.save(files.record)
            advance(batch.shard_users)
    _merge(files, progress.parts)
    progress.finished = True
    progress.save(files.record)


def summary(job: BatchJob, progress: JobProgress) -> str:
    """One line on what the output holds and what was left out."""
    text = (
        f"{job.out}: {progress.rows} rows, the top {job.k} items of {progress.users_ranked} users "
        f"(shard {job.shard} of {job.users})"
    )
    if progress.users_skipped:
        text += f"; {progress.users_skipped} user(s) skipped, no item of their history is in the export"
    if progress.unknown_ids:
        text += (
            f"; {progress.unknown_ids} unknown item id(s) dropped from {progress.users_with_unknown_ids} "
            f"user(s)' histories"
        )
    return text


if __name__ == "__main__":
    run_cli(main)
