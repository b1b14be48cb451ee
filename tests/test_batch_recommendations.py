"""`python -m crossan.export.batch`: top-k for every user of a users file into Parquet, on the
session's toy export.

The output holds, per user, `OnnxRecommender.recommend_scored`'s list; a process killed with SIGKILL
resumes to the same file; shards together are the whole; unknown item ids and bad inputs follow the
documented policy, each fault one line; the module loads no PyTorch; the Ray Data example (slow set)
writes the same rows.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Literal

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from killing import kill_when

from crossan.export.batch import SCHEMA, OutputFiles, main
from crossan.export.item_table import TABLE_FILE, load_item_table, save_item_table
from crossan.export.serve import OnnxRecommender
from crossan.zoo.core.errors import UserError
from crossan.zoo.core.file_lock import file_lock

REPO = Path(__file__).resolve().parents[1]
K = 10
BATCH = 8  # 100 batches of the toy's 800 users: a run lasts long enough to be killed halfway


@pytest.fixture(scope="module")
def users_file(toy_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The toy data set's `user<TAB>item item ...` file (800 users), copied where tests may change it."""
    path = tmp_path_factory.mktemp("users") / "users.tsv"
    shutil.copyfile(toy_root / "toy_pairs.tsv", path)
    return path


@pytest.fixture(scope="module")
def histories(users_file: Path) -> dict[str, list[str]]:
    return {user: items.split() for user, items in (line.split("\t") for line in users_file.read_text().splitlines())}


@pytest.fixture(scope="module")
def recommender(toy_export: Path) -> OnnxRecommender:
    return OnnxRecommender(toy_export)


def arguments(export: Path, users: Path, out: Path, *extra: str, k: int = K, batch_size: int = BATCH) -> list[str]:
    return [
        "--export",
        str(export),
        "--users",
        str(users),
        "--k",
        str(k),
        "--out",
        str(out),
        "--batch-size",
        str(batch_size),
        *extra,
    ]


@pytest.fixture(scope="module")
def full_run(toy_export: Path, users_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The whole users file ranked uninterrupted, unsharded, `BATCH` users at a time."""
    out = tmp_path_factory.mktemp("full") / "recs.parquet"
    assert main(arguments(toy_export, users_file, out)) == 0
    return out


def rows_by_user(table: pa.Table) -> dict[str, list[tuple[int, str, float]]]:
    """`{user: [(rank, item, score), ...]}` in file order."""
    found: dict[str, list[tuple[int, str, float]]] = {}
    for row in table.to_pylist():
        found.setdefault(row["user"], []).append((row["rank"], row["item"], row["score"]))
    return found


def error_of(argv: list[str]) -> str:
    """The one-line message of the `UserError` that `main(argv)` raises."""
    with pytest.raises(UserError) as caught:
        main(argv)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_every_user_gets_k_rows_equal_to_recommend_scored(
    full_run: Path, histories: dict[str, list[str]], recommender: OnnxRecommender
) -> None:
    parquet = pq.ParquetFile(full_run)
    assert parquet.schema_arrow == SCHEMA
    assert parquet.metadata.num_row_groups == len(histories) // BATCH
    assert {parquet.metadata.row_group(g).num_rows for g in range(parquet.metadata.num_row_groups)} == {BATCH * K}
    found = rows_by_user(parquet.read())
    assert list(found) == list(histories)  # every user once, in file order
    users = list(histories)
    for start in range(0, len(users), BATCH):  # the command's batches: the same arithmetic, bit for bit
        batch = users[start : start + BATCH]
        expected = recommender.recommend_scored([histories[user] for user in batch], K)
        assert recommender.recommend([histories[user] for user in batch], K) == [
            [item for item, _ in ranked] for ranked in expected
        ]
        for user, ranked in zip(batch, expected, strict=True):
            assert found[user] == [(rank, item, score) for rank, (item, score) in enumerate(ranked, start=1)]
    record = json.loads(OutputFiles(full_run).record.read_text())
    assert record["finished"] and record["rows"] == len(users) * K and record["users_skipped"] == 0
    assert not OutputFiles(full_run).parts.exists()


def test_a_finished_output_is_left_alone(
    toy_export: Path, users_file: Path, full_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    written = full_run.stat().st_mtime_ns
    assert main(arguments(toy_export, users_file, full_run)) == 0
    assert "is already finished" in capsys.readouterr().out
    assert full_run.stat().st_mtime_ns == written


def test_killed_run_resumes_to_the_uninterrupted_output(
    toy_export: Path, users_file: Path, full_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "recs.parquet"
    files = OutputFiles(out)

    def some_users_done(_: list[str]) -> bool:
        try:
            return json.loads(files.record.read_text())["next_user"] >= 5 * BATCH
        except (OSError, ValueError):  # not written yet
            return False

    kill_when([sys.executable, "-m", "crossan.export.batch", *arguments(toy_export, users_file, out)], some_users_done)
    record = json.loads(files.record.read_text())
    assert not record["finished"] and 0 < record["next_user"] < 800 and record["parts"] > 0
    assert not out.exists()
    assert main(arguments(toy_export, users_file, out)) == 0
    assert f"resuming {out}: " in capsys.readouterr().out
    resumed, uninterrupted = pq.read_table(out), pq.read_table(full_run)
    assert resumed.equals(uninterrupted)
    assert pq.ParquetFile(out).metadata.num_row_groups == pq.ParquetFile(full_run).metadata.num_row_groups
    assert set(Counter(resumed.column("user").to_pylist()).values()) == {K}  # no user twice, none short
    assert json.loads(files.record.read_text())["finished"]


def test_shards_together_are_the_unsharded_output(
    toy_export: Path, users_file: Path, full_run: Path, histories: dict[str, list[str]], tmp_path: Path
) -> None:
    shards = []
    for shard in ("0/2", "1/2"):
        out = tmp_path / f"shard-{shard[0]}.parquet"
        assert main(arguments(toy_export, users_file, out, "--shard", shard)) == 0
        shards.append(rows_by_user(pq.read_table(out)))
    users = list(histories)
    assert list(shards[0]) == users[0::2] and list(shards[1]) == users[1::2]  # by position in the file
    whole = rows_by_user(pq.read_table(full_run))
    together = {**shards[0], **shards[1]}
    assert sorted(together) == sorted(whole)
    for user, rows in whole.items():
        assert [row[:2] for row in together[user]] == [row[:2] for row in rows]
        np.testing.assert_allclose([row[2] for row in together[user]], [row[2] for row in rows], rtol=1e-6)


def test_unknown_items_are_dropped_and_users_without_known_items_skipped(
    toy_export: Path, recommender: OnnxRecommender, histories: dict[str, list[str]], tmp_path: Path
) -> None:
    known = list(histories.values())[0]
    users = tmp_path / "users.tsv"
    users.write_text(
        f"mixed\t{known[0]} x-unknown {known[1]} x-unknown\n"
        "\n"  # blank lines are skipped
        "only-unknown\tx-1 x-2\n"
        "no-items\t\n"
        f"plain\t{known[2]}\n"
    )
    out = tmp_path / "recs.parquet"
    assert main(arguments(toy_export, users, out, k=5)) == 0
    found = rows_by_user(pq.read_table(out))
    assert list(found) == ["mixed", "plain"]
    expected = recommender.recommend_scored([[known[0], known[1]], [known[2]]], 5)
    for user, ranked in zip(["mixed", "plain"], expected, strict=True):
        assert found[user] == [(rank, item, score) for rank, (item, score) in enumerate(ranked, start=1)]
    record = json.loads(OutputFiles(out).record.read_text())
    assert (record["users_skipped"], record["unknown_ids"], record["users_with_unknown_ids"]) == (2, 4, 2)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("u1\ti0001\nu2 i0002\n", ":2: expected 'user<TAB>item item ...', got 1 tab-separated field(s)"),
        ("u1\ti0001\n\ti0002\n", ":2: expected 'user<TAB>item item ...', got an empty user id"),
        ("u1\ti0001\nu2\ti0002\tx\n", ":2: expected 'user<TAB>item item ...', got 3 tab-separated field(s)"),
        ("u1\ti0001\nu2\ti0002\n\nu1\ti0003\n", ":4: user 'u1' appears twice (first on line 1)"),
        ("u1\ti0001\nu2\ti0002", ":2: the file ends inside this line"),
    ],
)
def test_bad_lines_are_one_error_naming_file_and_line(
    toy_export: Path, tmp_path: Path, content: str, expected: str
) -> None:
    users = tmp_path / "users.tsv"
    users.write_text(content)
    out = tmp_path / "recs.parquet"
    assert error_of(arguments(toy_export, users, out)).startswith(f"{users}{expected}")
    assert not out.exists() and not OutputFiles(out).record.exists()  # nothing is written before the check


def test_bad_arguments_are_one_error(toy_export: Path, users_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "recs.parquet"
    for shard in ("2/2", "1/0", "a/2", "1", "-1/2"):
        assert "--shard" in error_of(arguments(toy_export, users_file, out, f"--shard={shard}"))
    assert error_of(arguments(toy_export, users_file, out, k=0)) == "--k must be a positive integer, got 0"
    assert error_of(arguments(toy_export, users_file, out, "--threads", "0")) == (
        "--threads must be a positive integer, got 0"
    )
    assert error_of(arguments(toy_export, tmp_path / "none.tsv", out)) == f"{tmp_path / 'none.tsv'}: file not found"
    out.write_text("someone else's")
    assert "exists but" in error_of(arguments(toy_export, users_file, out))


def test_a_restart_with_other_arguments_or_inputs_is_refused(
    toy_export: Path, users_file: Path, full_run: Path, histories: dict[str, list[str]], tmp_path: Path
) -> None:
    assert "k was 10, is now 11" in error_of(arguments(toy_export, users_file, full_run, k=11))
    assert "shard was '0/1', is now '1/2'" in error_of(arguments(toy_export, users_file, full_run, "--shard", "1/2"))
    export = tmp_path / "export"  # changed below: not the shared export
    shutil.copytree(toy_export, export)
    users = tmp_path / "users.tsv"
    users.write_text("".join(f"{user}\t{' '.join(items)}\n" for user, items in list(histories.items())[:3]))
    out = tmp_path / "recs.parquet"
    assert main(arguments(export, users, out)) == 0
    assert "index was 'exact', is now 'faiss'" in error_of(arguments(export, users, out, "--index", "faiss"))
    table, item_ids = load_item_table(export / TABLE_FILE)
    save_item_table(export / TABLE_FILE, 2 * table, item_ids, "a new table")  # not recorded in validation.json
    assert error_of(arguments(export, users, out)).startswith(
        f"{out} was started with other arguments or inputs (export_sha256 changed)"
    )
    with users.open("a") as handle:
        handle.write("u-new\ti0001\n")
    assert "export_sha256 changed; users_file changed" in error_of(arguments(export, users, out))


def test_one_process_at_a_time_per_output(toy_export: Path, users_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "recs.parquet"
    with file_lock(OutputFiles(out).lock) as held:
        assert held
        assert "another process is writing it" in error_of(arguments(toy_export, users_file, out))


def test_the_command_prints_one_line_and_loads_no_pytorch(toy_export: Path, users_file: Path, tmp_path: Path) -> None:
    """A fresh interpreter (this one has PyTorch loaded) runs the command, then a bad one."""
    out = tmp_path / "recs.parquet"
    code = (
        "import sys\n"
        "from crossan.export.batch import main\n"
        f"assert main({arguments(toy_export, users_file, out, '--index', 'exact')!r}) == 0\n"
        "print('loaded:' + ','.join(name for name in ('torch', 'transformers', 'triton') if name in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "loaded:", f"the batch command {result.stdout.splitlines()[-1]}"
    bad = subprocess.run(
        [sys.executable, "-m", "crossan.export.batch", *arguments(toy_export, users_file, out, "--shard", "3/2")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert (bad.returncode, bad.stderr) == (2, "error: --shard I/N needs 0 <= I < N, got 3/2\n")


def test_faiss_scores_are_the_exact_scores(toy_export: Path, users_file: Path, full_run: Path, tmp_path: Path) -> None:
    """On 128 items the HNSW search finds the exact top-k; the scores, computed again for the items
    found, are the exact path's."""
    export = tmp_path / "export"
    shutil.copytree(toy_export, export)  # the index is saved beside the table: not in the shared export
    out = tmp_path / "recs.parquet"
    assert main(arguments(export, users_file, out, "--index", "faiss")) == 0
    assert pq.read_table(out).equals(pq.read_table(full_run))


@pytest.mark.slow
def test_ray_data_shards_write_the_same_rows(
    toy_export: Path, users_file: Path, full_run: Path, tmp_path: Path
) -> None:
    import ray  # in the dev extra, so this runs wherever the tests do

    from crossan.export.ray_batch import run_shards

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        summaries = run_shards(toy_export, users_file, K, tmp_path / "recs", shards=3, batch_size=BATCH, workers=2)
    finally:
        ray.shutdown()
    assert [int(row["shard"]) for row in summaries] == [0, 1, 2]
    assert sum(int(row["users_ranked"]) for row in summaries) == 800
    together = rows_by_user(pq.read_table(tmp_path / "recs"))  # hidden progress records are not read
    whole = rows_by_user(pq.read_table(full_run))
    assert sorted(together) == sorted(whole)
    for user, rows in whole.items():
        assert [row[:2] for row in together[user]] == [row[:2] for row in rows]
        np.testing.assert_allclose([row[2] for row in together[user]], [row[2] for row in rows], rtol=1e-6)


@pytest.mark.parametrize("index", ["exact", "faiss"])
def test_threads_bound_the_sessions_and_change_no_result(
    toy_export: Path, histories: dict[str, list[str]], tmp_path: Path, index: Literal["exact", "faiss"]
) -> None:
    """threads=1: the user encoder's session runs one intra-op and one inter-op thread, FAISS one
    thread, and every list and score is the unbounded recommender's, bit for bit."""
    export = toy_export
    if index == "faiss":  # the index is saved beside the table: not in the shared export
        export = tmp_path / "export"
        shutil.copytree(toy_export, export)
    users = list(histories.values())[: 4 * BATCH]
    default_faiss_threads = faiss.omp_get_max_threads()
    free = OnnxRecommender(export, index=index)
    expected = free.recommend_scored(users, K)
    try:
        bounded = OnnxRecommender(export, index=index, threads=1)
        assert bounded.recommend_scored(users, K) == expected
        assert bounded.recommend(users, K) == [[item for item, _ in ranked] for ranked in expected]
        assert faiss.omp_get_max_threads() == (1 if index == "faiss" else default_faiss_threads)
    finally:
        faiss.omp_set_num_threads(default_faiss_threads)  # process-wide: leave it to the other tests
    options = bounded.session.get_session_options()
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (1, 1)
    assert free.session.get_session_options().intra_op_num_threads == 0  # onnxruntime's default: one a core


def test_the_command_s_threads_change_no_row(
    toy_export: Path, users_file: Path, full_run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "recs.parquet"
    assert main(arguments(toy_export, users_file, out, "--threads", "1")) == 0
    assert pq.read_table(out).equals(pq.read_table(full_run))


@pytest.mark.parametrize(("threads", "error"), [(0, ValueError), (-2, ValueError), (True, TypeError)])
def test_threads_below_one_are_refused_naming_the_argument(
    toy_export: Path, threads: int, error: type[Exception]
) -> None:
    with pytest.raises(error, match=rf"^threads must be a positive int or None, got {threads}\b"):
        OnnxRecommender(toy_export, threads=threads)


def test_the_command_offers_the_recommender_s_index_kinds() -> None:
    """`crossan batch --help` loads no ONNX Runtime, so its --index choices are its own copy."""
    from crossan.export.batch_command import INDEX_CHOICES
    from crossan.export.serve import INDEX_KINDS

    assert INDEX_CHOICES == INDEX_KINDS
