"""Nothing silently wrong on the export and serving side: every bad file, bad request or failed
export is one error that says what and where, and a failed export leaves the previous one as it was.

- NaN or infinite embeddings and scores raise (`NonFiniteScoreError` when serving,
  `NonFiniteOutputError` in the export's validation) instead of being ranked or left out.
- `python -m crossan.export --out DIR` swaps a finished, validated export in whole
  (`crossan.export.publishing`): a validation failure, a full disk or a killed process leaves
  DIR byte for byte as it was, and `OnnxRecommender` goes on serving it.
- Every file `OnnxRecommender` and the content encoder read fails as one line naming it.
- Requests are typed: item ids are str, histories lists of them, `k` a positive int.

The fast tests reuse the session's toy run and export; the slow set runs real exports that are
failed, killed and starved of disk.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from safetensors.numpy import save_file

import crossan.export.exporter as exporter
from crossan.export.__main__ import main as export_main
from crossan.export.ann_index import INDEX_FILE, HnswParameters, ann_top_k_rows, build_index
from crossan.export.content import ITEM_ENCODER_FILE
from crossan.export.errors import (
    ExportFileError,
    ExportValidationError,
    ExportWriteError,
    NonFiniteOutputError,
    NonFiniteScoreError,
    ValueMismatchError,
)
from crossan.export.exporter import export_run
from crossan.export.item_table import TABLE_FILE, load_item_table, save_item_table
from crossan.export.preprocessing import load_preprocessing
from crossan.export.publishing import publish, staged_export
from crossan.export.ranking import top_k_rows
from crossan.export.reading import RECORDS_KEY, REPORT_FILE, file_record
from crossan.export.serve import USER_ENCODER_FILE, OnnxRecommender, UnknownItemError
from crossan.export.spec import SPEC_METADATA_KEY, ExportSpec
from crossan.export.validation import catalogue_embeddings, recommend, validate_encoder
from crossan.zoo.cli.options import run_cli
from crossan.zoo.core.errors import ConfigError, MissingFileError, UserError

REPO = Path(__file__).resolve().parents[1]
SERVING_FILES = (USER_ENCODER_FILE, TABLE_FILE, REPORT_FILE)
HISTORIES = [["i0001", "i0017", "i0042"], ["i0023"]]
NUM_ITEMS = 128  # tests/conftest.py SMALL_TOY


# --- helpers -------------------------------------------------------------------------------------


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (hidden ones too) by relative path, with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def serving_copy(export: Path, folder: Path, files: tuple[str, ...] = SERVING_FILES) -> Path:
    """A copy of the files of `export` that `OnnxRecommender` reads (the user encoder, the table, the report)."""
    folder.mkdir(parents=True)
    for name in files:
        shutil.copy2(export / name, folder / name)
    return folder


def rerecord(folder: Path, name: str) -> None:
    """Record `name`'s current size and hash in the folder's report, as an export that wrote it would."""
    report = json.loads((folder / REPORT_FILE).read_text())
    report[RECORDS_KEY][name] = file_record(folder / name)
    (folder / REPORT_FILE).write_text(json.dumps(report))


def scaled_user_encoder(source: Path, target: Path, scale: float, spec: bool = True) -> None:
    """A user encoder with `source`'s spec and signature: the sum of the history's embeddings
    times `scale` (NaN stands for a model whose weights went NaN)."""
    original = onnx.load(str(source))
    spec_json = next(p.value for p in original.metadata_props if p.key == SPEC_METADATA_KEY)
    width = original.graph.input[0].type.tensor_type.shape.dim[2].dim_value
    graph = helper.make_graph(
        [
            helper.make_node("ReduceSum", ["item_embeddings", "axes"], ["summed"], keepdims=0),
            helper.make_node("Mul", ["summed", "scale"], ["user_embedding"]),
        ],
        "user_encoder",
        [
            helper.make_tensor_value_info("item_embeddings", TensorProto.FLOAT, ["batch", "length", width]),
            helper.make_tensor_value_info("padding_mask", TensorProto.BOOL, ["batch", "length"]),
        ],
        [helper.make_tensor_value_info("user_embedding", TensorProto.FLOAT, ["batch", width])],
        initializer=[
            numpy_helper.from_array(np.array([1], dtype=np.int64), "axes"),
            numpy_helper.from_array(np.array(scale, dtype=np.float32), "scale"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    if spec:
        helper.set_model_props(model, {SPEC_METADATA_KEY: spec_json})
    onnx.save(model, str(target))


def one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Run `python -m crossan.export ARGV` as the command line does; its stderr, which must be one
    `error:` line with exit status 2."""
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: export_main(argv))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1 and err.startswith("error: "), err
    return err


@pytest.fixture(scope="module")
def recommender(toy_export: Path) -> OnnxRecommender:
    return OnnxRecommender(toy_export)


# --- 1. NaN and inf are never ranked -------------------------------------------------------------


@pytest.mark.parametrize("index", ["exact", "faiss"])
def test_nan_user_embeddings_raise_naming_the_histories(toy_export: Path, tmp_path: Path, index: str) -> None:
    """Before: `recommend` returned `[[]]` (every score NaN, every item left out)."""
    folder = serving_copy(toy_export, tmp_path / "export")
    scaled_user_encoder(toy_export / USER_ENCODER_FILE, folder / USER_ENCODER_FILE, float("nan"))
    rerecord(folder, USER_ENCODER_FILE)
    recommender = OnnxRecommender(folder, index=index)  # type: ignore[arg-type]  # a wrong type on purpose
    with pytest.raises(
        NonFiniteScoreError,
        match=r"user_encoder\.onnx gives NaN or infinite user embeddings for "
        r"histories 0, 1 \(positions in the request\); nothing was ranked",
    ):
        recommender.recommend(HISTORIES, k=5)
    assert issubclass(NonFiniteScoreError, UserError) and issubclass(NonFiniteScoreError, ValueError)


def test_nan_item_embeddings_in_the_table_are_refused_on_loading(toy_export: Path, tmp_path: Path) -> None:
    folder = serving_copy(toy_export, tmp_path / "export")
    table, item_ids = load_item_table(folder / TABLE_FILE)
    table[2, 0], table[5, 3] = np.nan, np.inf
    save_item_table(folder / TABLE_FILE, table, item_ids, "test")
    with pytest.raises(
        ExportFileError,
        match=r"item_embeddings\.safetensors: the embeddings of 2 item\(s\) hold "
        r"NaN or inf \(i0003, i0006\)",
    ):
        OnnxRecommender(folder)


def test_overflowing_scores_raise_naming_users_and_items() -> None:
    """Finite embeddings whose dot products overflow float32 are not ranked either, exactly or by FAISS."""
    users = np.ones((2, 4), dtype=np.float32)
    table = np.ones((5, 4), dtype=np.float32)
    table[3] = 3e38
    names = [f"i{n}" for n in range(5)]
    with pytest.raises(NonFiniteScoreError, match=r"user\(s\) 0, 1 .* item\(s\) i3: .* overflow float32"):
        top_k_rows(users, table, [np.array([1]), np.array([2])], 2, names)
    with pytest.raises(NonFiniteScoreError, match=r"user\(s\) 0, 1 .* item\(s\) i3"):
        ann_top_k_rows(build_index(table, HnswParameters()), users, table, [np.array([1]), np.array([2])], 2, names)


class ConstantEncoder:
    """An encoder in a made-up runtime whose output is `values`, whatever the inputs."""

    def __init__(self, name: str, output: str, values: np.ndarray, runtime: str = "fake") -> None:
        self.spec = ExportSpec(name, ("x",), (output,), {})
        self.runtime = runtime
        self.values = values

    def check_signature(self) -> None:
        """Nothing to check."""

    def __call__(self, *inputs: object) -> list[np.ndarray]:
        return [self.values[: len(inputs[0])] if len(self.values) > 1 else self.values]


def test_export_validation_names_the_graph_and_output_that_are_not_finite() -> None:
    import torch

    embeddings = np.ones((4, 3), dtype=np.float32)
    embeddings[2, 1] = np.nan
    items = ConstantEncoder("item_encoder", "item_embedding", embeddings)
    with pytest.raises(
        NonFiniteOutputError,
        match=r"^item_encoder in fake: output item_embedding is NaN or infinite "
        r"in 1 catalogue rows \(2\)$",
    ):
        catalogue_embeddings(items, lambda rows: (rows,), 4)

    vectors = np.ones((3, 3), dtype=np.float32)
    vectors[1] = np.inf
    users = ConstantEncoder("user_encoder", "user_embedding", vectors)
    with pytest.raises(
        NonFiniteOutputError,
        match=r"^user_encoder in fake: output user_embedding is NaN or infinite "
        r"in 1 users \(1\)$",
    ):
        recommend(users, np.ones((4, 3), dtype=np.float32), [np.array([1]), np.array([2]), np.array([3])], 2)

    case = [("B=1", (torch.zeros(1, 3),))]
    finite = ConstantEncoder("user_encoder", "user_embedding", np.ones((1, 3), dtype=np.float32), "pytorch")
    broken = ConstantEncoder(
        "user_encoder", "user_embedding", np.full((1, 3), np.nan, dtype=np.float32), "onnxruntime CPU"
    )
    with pytest.raises(
        NonFiniteOutputError,
        match=r"^user_encoder in onnxruntime CPU at B=1: output user_embedding "
        r"is NaN or infinite in 1 rows \(0\)$",
    ):
        validate_encoder(broken, finite, case)  # type: ignore[arg-type]  # a wrong type on purpose
    broken.runtime = "pytorch"
    with pytest.raises(NonFiniteOutputError, match=r"user_encoder in pytorch at B=1: .*the run's model itself"):
        validate_encoder(finite, broken, case)  # type: ignore[arg-type]  # a wrong type on purpose
    assert issubclass(NonFiniteOutputError, ValueMismatchError) and issubclass(NonFiniteOutputError, UserError)


# --- 2. exports are swapped in whole -------------------------------------------------------------


def fake_export(folder: Path, marker: str) -> Path:
    """A folder with the names of an export's files, each holding `marker`."""
    folder.mkdir()
    for name in SERVING_FILES:
        (folder / name).write_text(f"{marker} {name}")
    return folder


def test_publish_replaces_the_folder_whole(tmp_path: Path) -> None:
    out = fake_export(tmp_path / "export", "old")
    publish(fake_export(tmp_path / ".export.partial-abc", "new"), out)
    assert tree(out) == {name: f"new {name}".encode() for name in SERVING_FILES}
    assert [p.name for p in tmp_path.iterdir()] == ["export"]
    assert out.stat().st_mode & 0o777 == 0o755


class Killed(BaseException):
    """Stands for the process being killed: nothing after it runs, not even a rollback."""


def test_a_kill_between_the_two_renames_leaves_the_previous_export_recoverable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = fake_export(tmp_path / "export", "old")
    staging = fake_export(tmp_path / ".export.partial-abc", "new")
    real_rename, calls = os.rename, []

    def rename_then_die(source: str, target: str) -> None:
        calls.append(target)
        if len(calls) > 1:
            raise Killed
        real_rename(source, target)

    monkeypatch.setattr(os, "rename", rename_then_die)
    with pytest.raises(Killed):
        publish(staging, out)
    monkeypatch.undo()
    old = tmp_path / ".export.old-abc"
    assert not out.exists() and tree(old) == {name: f"old {name}".encode() for name in SERVING_FILES}
    with pytest.raises(
        MissingFileError,
        match=r"export: missing, but \.export\.old-abc beside it holds the previous "
        r"export .*: rename it to export",
    ):
        OnnxRecommender(out)
    old.rename(out)  # the documented recovery
    assert tree(out) == {name: f"old {name}".encode() for name in SERVING_FILES}


def test_a_failed_swap_renames_the_previous_export_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = fake_export(tmp_path / "export", "old")
    before = tree(out)
    real_rename, calls = os.rename, []

    def second_rename_fails(source: str, target: str) -> None:
        calls.append(target)
        if len(calls) == 2:
            raise OSError(errno.EIO, "Input/output error", str(target))
        real_rename(source, target)

    monkeypatch.setattr(os, "rename", second_rename_fails)
    with pytest.raises(
        ExportWriteError,
        match=r"the export to .*export failed \(\[Errno 5\] Input/output error: "
        r".*'\); it is unchanged",
    ):
        with staged_export(out) as staging:
            for name in SERVING_FILES:
                (staging / name).write_text(f"new {name}")
    assert tree(out) == before and [p.name for p in tmp_path.iterdir()] == ["export"]


FAILED_EXPORTS = {
    # fault: (what the export raises after half-writing an encoder, the one line printed; None: a traceback)
    "validation": (
        ValueMismatchError("user_encoder in onnxruntime CPU at B=1: max abs error 1 > tolerance 0.0001"),
        None,
    ),
    "disk full": (
        OSError(errno.ENOSPC, "No space left on device"),
        r"^error: the export to .*/export failed \(\[Errno 28\] No space left on device: "
        r"'.*/\.export\.partial-\w+/user_encoder\.onnx'\); it is unchanged$",
    ),
    "not finite": (
        NonFiniteOutputError("item_encoder in pytorch at B=1: output item_embedding is NaN"),
        r"^error: item_encoder in pytorch at B=1: output item_embedding is NaN$",
    ),
}


@pytest.mark.parametrize("fault", FAILED_EXPORTS)
def test_a_failed_export_leaves_the_previous_one_byte_for_byte(
    toy_run: Path,
    toy_export: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    fault: str,
) -> None:
    """Before: the new encoders sat beside the old table and report, and `OnnxRecommender`
    served the mix. Here the export fails after writing half of an encoder into its folder."""
    out = tmp_path / "export"
    shutil.copytree(toy_export, out)
    before, served = tree(out), OnnxRecommender(out).recommend(HISTORIES, k=5)
    error, line = FAILED_EXPORTS[fault]

    def half_written(model: object, out_dir: Path, opset: int) -> None:
        (out_dir / USER_ENCODER_FILE).write_bytes(b"half a graph")
        if isinstance(error, OSError):
            raise OSError(error.errno, error.strerror, str(out_dir / USER_ENCODER_FILE))
        raise error

    monkeypatch.setattr(exporter, "export_model", half_written)
    if line is None:  # a mismatch is a bug, not a user error: it keeps its traceback
        with pytest.raises(ValueMismatchError, match="max abs error"):
            export_main(["--run", str(toy_run), "--out", str(out)])
    else:
        assert re.match(line, one_line_error(capsys, ["--run", str(toy_run), "--out", str(out)]).strip())
    assert tree(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["export"]
    assert OnnxRecommender(out).recommend(HISTORIES, k=5) == served


def test_out_naming_a_file_or_a_foreign_folder_is_one_line(
    toy_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "notes.txt"
    file.write_text("keep me")
    err = one_line_error(capsys, ["--run", str(toy_run), "--out", str(file)])
    assert "notes.txt: a file is there, not a folder" in err and file.read_text() == "keep me"
    folder = tmp_path / "project"
    (folder / "data").mkdir(parents=True)
    (folder / "README.md").write_text("keep me")
    err = one_line_error(capsys, ["--run", str(toy_run), "--out", str(folder)])
    assert "holds README.md, data, which no export writes: not replacing it" in err
    assert (folder / "README.md").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "project"]
    with pytest.raises(ConfigError):
        export_run(toy_run, file)


def export_command(run: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "crossan.export", "--run", str(run), "--out", str(out)]


SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_a_real_validation_mismatch_leaves_the_previous_export(
    toy_run: Path, toy_export: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The encoders are really exported into the hidden folder; the check after them fails."""
    out = tmp_path / "export"
    shutil.copytree(toy_export, out)
    before = tree(out)

    def mismatch(*args: object) -> None:
        raise ValueMismatchError("user_encoder in onnxruntime CPU at B=1: max abs error 1 > tolerance 0.0001")

    monkeypatch.setattr(exporter, "validate_grid", mismatch)
    with pytest.raises(ExportValidationError, match="max abs error 1"):
        export_main(["--run", str(toy_run), "--out", str(out)])
    assert tree(out) == before and [p.name for p in tmp_path.iterdir()] == ["export"]


@pytest.mark.slow
def test_a_killed_export_leaves_the_previous_export_and_a_rerun_replaces_it(
    toy_run: Path, toy_export: Path, tmp_path: Path
) -> None:
    out = tmp_path / "export"
    shutil.copytree(toy_export, out)
    before, served = tree(out), OnnxRecommender(out).recommend(HISTORIES, k=5)
    process = subprocess.Popen(
        export_command(toy_run, out), cwd=REPO, env=SUBPROCESS_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    while not any(tmp_path.glob(f".export.partial-*/{ITEM_ENCODER_FILE}")):  # killed mid-export
        assert process.poll() is None and time.monotonic() < deadline, "the export ended before it was killed"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert tree(out) == before
    assert OnnxRecommender(out).recommend(HISTORIES, k=5) == served
    (left,) = [p.name for p in tmp_path.iterdir() if p.name != "export"]
    assert left.startswith(".export.partial-")  # hidden, nothing loads it

    rerun = subprocess.run(
        export_command(toy_run, out), cwd=REPO, env=SUBPROCESS_ENV, capture_output=True, text=True, timeout=600
    )
    assert rerun.returncode == 0, rerun.stderr
    assert left in rerun.stdout and "delete it" in rerun.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["export", left])
    report = json.loads((out / REPORT_FILE).read_text())
    assert all(file_record(out / name) == record for name, record in report[RECORDS_KEY].items())
    assert OnnxRecommender(out).recommend(HISTORIES, k=5) == served


DISK_FULL = """
import resource, signal, sys
from crossan.export.__main__ import main
from crossan.zoo.cli.options import run_cli
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit raises EFBIG instead of killing
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
run_cli(lambda: main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_a_full_disk_during_the_export_is_one_line_and_leaves_the_previous_export(
    toy_run: Path, toy_export: Path, tmp_path: Path
) -> None:
    out = tmp_path / "export"
    shutil.copytree(toy_export, out)
    before = tree(out)
    result = subprocess.run(
        [sys.executable, "-c", DISK_FULL, "--run", str(toy_run), "--out", str(out)],
        cwd=REPO,
        env=SUBPROCESS_ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.strip()]
    assert line.startswith("error: the export to ") and "[Errno 27] File too large" in line, line
    assert f"{ITEM_ENCODER_FILE}'); it is unchanged" in line, line
    assert tree(out) == before and [p.name for p in tmp_path.iterdir()] == ["export"]


# --- 3. every file the serving side reads --------------------------------------------------------


def damage(folder: Path, name: str, how: str, toy_export: Path) -> None:
    """Damage file `name` of `folder` in the way `how` names."""
    path = folder / name
    if how == "missing":
        path.unlink()
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif how == "not ONNX":
        path.write_text("<html>not found</html>")
    elif how == "item encoder":
        shutil.copy(toy_export / ITEM_ENCODER_FILE, path)
    elif how == "no spec":
        scaled_user_encoder(toy_export / USER_ENCODER_FILE, path, 1.0, spec=False)


USER_ENCODER_FAULTS = {
    "missing": (MissingFileError, r"user_encoder\.onnx: missing; re-export with `python -m crossan.export"),
    "empty": (ExportFileError, r"user_encoder\.onnx: empty; re-export"),
    "truncated": (ExportFileError, r"user_encoder\.onnx: not a readable ONNX model \(.*Protobuf parsing failed"),
    "not ONNX": (ExportFileError, r"user_encoder\.onnx: not a readable ONNX model"),
    "item encoder": (ExportFileError, r"user_encoder\.onnx: holds the item_encoder graph, not the user_encoder"),
    "no spec": (
        ExportFileError,
        r"user_encoder\.onnx: no readable export spec in its 'crossan.export_spec' "
        r"metadata, so not written by `python -m crossan.export`",
    ),
}


@pytest.mark.parametrize("how", USER_ENCODER_FAULTS)
def test_a_damaged_user_encoder_is_one_line_naming_it(toy_export: Path, tmp_path: Path, how: str) -> None:
    """Without the report's records, so that the reader itself meets the damage."""
    folder = serving_copy(toy_export, tmp_path / "export", (USER_ENCODER_FILE, TABLE_FILE))
    damage(folder, USER_ENCODER_FILE, how, toy_export)
    kind, pattern = USER_ENCODER_FAULTS[how]
    with pytest.raises(kind, match=pattern) as error:
        OnnxRecommender(folder)
    assert "\n" not in str(error.value)


def write_table(path: Path, embeddings: np.ndarray, item_ids: object, tensor: str = "item_embeddings") -> None:
    """An item table as `save_item_table` writes it, but with whatever ids (and tensor name) the test wants."""
    save_file({tensor: embeddings}, str(path), metadata={"item_ids": json.dumps(item_ids), "source": "test"})


TABLE_FAULTS = {
    "missing": (MissingFileError, r"item_embeddings\.safetensors: missing"),
    "empty": (ExportFileError, r"item_embeddings\.safetensors: empty"),
    "truncated": (ExportFileError, r"item_embeddings\.safetensors: not a readable safetensors file \(.*incomplete"),
    "not safetensors": (ExportFileError, r"item_embeddings\.safetensors: not a readable safetensors file"),
    "other tensor": (ExportFileError, r"item_embeddings\.safetensors: no 'item_embeddings' tensor \(it holds table\)"),
    "fewer ids": (ExportFileError, r"item_embeddings\.safetensors: 127 item ids for 128 embeddings"),
    "repeated ids": (ExportFileError, r"item_embeddings\.safetensors: item ids repeat \(i0001\)"),
    "int ids": (ExportFileError, r"item_embeddings\.safetensors: its item_ids metadata is not a list of strings"),
    "other width": (
        ExportFileError,
        r"item_embeddings\.safetensors: embeddings are 32 wide, user_encoder\.onnx takes "
        r"64: the files come from different exports",
    ),
}


@pytest.mark.parametrize("how", TABLE_FAULTS)
def test_a_damaged_or_inconsistent_item_table_is_one_line_naming_it(toy_export: Path, tmp_path: Path, how: str) -> None:
    folder = serving_copy(toy_export, tmp_path / "export")
    path = folder / TABLE_FILE
    table, ids = load_item_table(path)
    if how in ("missing", "empty", "truncated"):
        damage(folder, TABLE_FILE, how, toy_export)
    elif how == "not safetensors":
        path.write_text('{"item_ids": []}')
    else:
        changed = {
            "other tensor": (table, ids, "table"),
            "fewer ids": (table, ids[1:], "item_embeddings"),
            "repeated ids": (table, ["i0001", *ids[1:-1], "i0001"], "item_embeddings"),
            "int ids": (table, list(range(len(ids))), "item_embeddings"),
            "other width": (np.ascontiguousarray(table[:, :32]), ids, "item_embeddings"),
        }[how]
        write_table(path, *changed)
    kind, pattern = TABLE_FAULTS[how]
    with pytest.raises(kind, match=pattern) as error:
        OnnxRecommender(folder)
    assert "\n" not in str(error.value)


def test_a_file_changed_after_the_export_is_one_line(toy_export: Path, tmp_path: Path) -> None:
    """Another export's valid user encoder dropped into the folder: it loads fine, only the record tells."""
    folder = serving_copy(toy_export, tmp_path / "export")
    scaled_user_encoder(toy_export / USER_ENCODER_FILE, folder / USER_ENCODER_FILE, 1.0)
    size = (folder / USER_ENCODER_FILE).stat().st_size
    with pytest.raises(
        ExportFileError,
        match=rf"user_encoder\.onnx: bytes {size}, but validation\.json records "
        rf"\d+: the file changed after the export",
    ):
        OnnxRecommender(folder)
    recorded = json.loads((toy_export / REPORT_FILE).read_text())[RECORDS_KEY]
    assert set(recorded) == {"item_encoder.onnx", "item_encoder.pt", "user_encoder.onnx", "user_encoder.pt"}


@pytest.mark.parametrize(
    "text, pattern",
    [
        ('{"preset": "crossan-t', r"validation\.json: not valid JSON \(Unterminated string"),
        ('{"file_hashes": ["user_encoder.onnx"]}', r"validation\.json: 'file_hashes' is not a map of file name"),
    ],
)
def test_a_damaged_report_is_one_line_naming_it(toy_export: Path, tmp_path: Path, text: str, pattern: str) -> None:
    folder = serving_copy(toy_export, tmp_path / "export")
    (folder / REPORT_FILE).write_text(text)
    with pytest.raises(ExportFileError, match=pattern):
        OnnxRecommender(folder)


def test_a_missing_export_folder_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(
        MissingFileError,
        match=r"nowhere: no export folder there; write one with "
        r"`python -m crossan.export --run <run> --out .*nowhere`",
    ):
        OnnxRecommender(tmp_path / "nowhere")


@pytest.mark.parametrize("how", ["truncated", "changed"])
def test_a_damaged_item_encoder_is_one_line_when_items_are_added(toy_export: Path, tmp_path: Path, how: str) -> None:
    folder = serving_copy(toy_export, tmp_path / "export", (*SERVING_FILES, ITEM_ENCODER_FILE))
    damage(folder, ITEM_ENCODER_FILE, "truncated", toy_export)
    if how == "truncated":
        (folder / REPORT_FILE).unlink()
    pattern = (
        r"item_encoder\.onnx: not a readable ONNX model"
        if how == "truncated"
        else r"item_encoder\.onnx: bytes \d+, but validation\.json records \d+"
    )
    with pytest.raises(ExportFileError, match=pattern):
        OnnxRecommender(folder).add_items(["new"], {"text": ["a title"]})


def write_preprocessing(folder: Path, settings: dict[str, object]) -> None:
    """`preprocessing.json` for text, with a two-token WordLevel `tokenizer.json` beside it."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel

    folder.mkdir(exist_ok=True)
    Tokenizer(WordLevel({"[PAD]": 0, "[UNK]": 1, "kettle": 2}, unk_token="[UNK]")).save(str(folder / "tokenizer.json"))
    (folder / "preprocessing.json").write_text(json.dumps({"format_version": 1, "modalities": settings}))


AUDIO = {
    "sampling_rate": 16000,
    "seconds": 3.0,
    "max_length": 300,
    "frame_length": 400,
    "hop_length": 160,
    "fft_length": 512,
    "preemphasis": 0.97,
    "mel_floor": 1.19e-7,
    "mean": None,
    "std": None,
}
PREPROCESSING_FAULTS = {
    "preprocessing missing": (
        MissingFileError,
        r"preprocessing\.json: missing; export the backbones with "
        r"`python -m crossan.export --run <run> --with-backbones`",
    ),
    "preprocessing truncated": (ExportFileError, r"preprocessing\.json: not valid JSON"),
    "preprocessing settings": (
        ExportFileError,
        r"preprocessing\.json: bad text settings \(.*unexpected keyword "
        r"argument 'lowercase'\)",
    ),
    "preprocessing version": (ExportFileError, r"preprocessing\.json: format version 7, this code reads 1"),
    "tokenizer missing": (MissingFileError, r"tokenizer\.json: missing; export the backbones"),
    "tokenizer truncated": (ExportFileError, r"tokenizer\.json: not a readable tokenizer \(EOF while parsing"),
    "audio filters truncated": (ExportFileError, r"audio_filters\.safetensors: not a readable safetensors file"),
    "audio filters missing": (MissingFileError, r"audio_filters\.safetensors: missing"),
}


@pytest.mark.parametrize("how", PREPROCESSING_FAULTS)
def test_damaged_preprocessing_files_are_one_line_naming_them(tmp_path: Path, how: str) -> None:
    """Before: a truncated tokenizer.json raised a bare `Exception` without its path."""
    text = {"max_tokens": 8, "tokenizer_file": "tokenizer.json"}
    write_preprocessing(tmp_path, {"text": text, "audio": AUDIO} if "audio" in how else {"text": text})
    if "audio" in how and "missing" not in how:
        (tmp_path / "audio_filters.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    target = {"preprocessing": "preprocessing.json", "tokenizer": "tokenizer.json"}.get(how.split()[0])
    if how.endswith("missing") and target:
        (tmp_path / target).unlink()
    elif how.endswith("truncated") and target:
        (tmp_path / target).write_text((tmp_path / target).read_text()[:30])
    elif how == "preprocessing settings":
        write_preprocessing(tmp_path, {"text": {**text, "lowercase": True}})
    elif how == "preprocessing version":
        (tmp_path / "preprocessing.json").write_text(json.dumps({"format_version": 7, "modalities": {}}))
    kind, pattern = PREPROCESSING_FAULTS[how]
    with pytest.raises(kind, match=pattern) as error:
        load_preprocessing(tmp_path)
    assert "\n" not in str(error.value)


def test_a_damaged_faiss_index_is_rebuilt_with_a_warning_naming_it(toy_export: Path, tmp_path: Path) -> None:
    folder = serving_copy(toy_export, tmp_path / "export")
    exact = OnnxRecommender(folder).recommend(HISTORIES, k=5)
    OnnxRecommender(folder, index="faiss")  # builds and saves the index
    index_file = folder / INDEX_FILE
    index_file.write_bytes(index_file.read_bytes()[:100])
    with pytest.warns(UserWarning, match=r"item_index\.faiss: unreadable .*; rebuilding it"):
        rebuilt = OnnxRecommender(folder, index="faiss")
    assert rebuilt.recommend(HISTORIES, k=5) == exact


# --- 4. requests ---------------------------------------------------------------------------------

BAD_REQUESTS = [
    (([[1, 2]],), {}, TypeError, r"^history 0: item ids are str, got 1 \(int\) at position 0$"),
    (([np.array(["i0001"])],), {}, TypeError, r"^history 0 must be a list of item ids \(str\), got ndarray$"),
    ((np.array([["i0001"]]),), {}, TypeError, r"^histories must be a list of histories .*got ndarray$"),
    (([["i0001", 7]],), {}, TypeError, r"^history 0: item ids are str, got 7 \(int\) at position 1$"),
    ((["i0001"],), {}, TypeError, r"^history 0 must be a list of item ids \(str\), got str$"),
    (("i0001",), {}, TypeError, r"^histories must be a list of histories \(lists of item ids, str\), got str$"),
    (([["i0001"]],), {"k": 2.5}, TypeError, r"^k must be a positive int, got 2\.5 \(float\)$"),
    (([["i0001"]],), {"k": "5"}, TypeError, r"^k must be a positive int, got '5' \(str\)$"),
    (([["i0001"]],), {"k": True}, TypeError, r"^k must be a positive int, got True \(bool\)$"),
    (([["i0001"]],), {"k": 0}, ValueError, r"^k must be a positive int, got 0$"),
    (([["i0001"], []],), {}, ValueError, r"^histories 1 are empty; a user needs at least one item$"),
    (([["i0001", "nope"]],), {}, UnknownItemError, r"^1 unknown item id\(s\): nope "),
]


@pytest.mark.parametrize("args, kwargs, kind, pattern", BAD_REQUESTS)
def test_bad_recommend_requests_say_what_was_expected(
    recommender: OnnxRecommender, args: tuple, kwargs: dict, kind: type, pattern: str
) -> None:
    with pytest.raises(kind, match=pattern) as error:
        recommender.recommend(*args, **kwargs)
    assert type(error.value) is kind


@pytest.mark.parametrize(
    "ids, content, pattern",
    [
        ([9001], {"text": ["a title"]}, r"^item_ids: item ids are str, got 9001 \(int\) at position 0$"),
        (np.array(["i9001"]), {"text": ["a title"]}, r"^item_ids must be a list of item ids \(str\), got ndarray$"),
        ("i9001", {"text": ["a title"]}, r"^item_ids must be a list of item ids \(str\), got str$"),
        (["i9001"], [["a title"]], r"^content must map each modality to a list of sources, got list$"),
        (["i9001"], {"text": "a title"}, r"^content\['text'\] must be a list of sources .*got str$"),
        (["i9001"], {"image": [3]}, r"^content\['image'\]: sources are str or paths, got 3 \(int\)$"),
    ],
)
def test_bad_add_items_requests_say_what_was_expected(
    recommender: OnnxRecommender, ids: object, content: object, pattern: str
) -> None:
    with pytest.raises(TypeError, match=pattern):
        recommender.add_items(ids, content)  # type: ignore[arg-type]  # a wrong type on purpose
    assert len(recommender.item_ids) == NUM_ITEMS


KNOWN_IDS = frozenset(f"i{n:04d}" for n in range(1, NUM_ITEMS + 1))
KNOWN = st.sampled_from(sorted(KNOWN_IDS))
UNKNOWN = st.one_of(st.just("no-such-item"), st.text(max_size=5).filter(lambda s: not s.startswith("i0")))
WRONG = st.one_of(st.integers(), st.none(), st.floats(), st.booleans(), st.binary(max_size=3))
ITEM = st.one_of(KNOWN, KNOWN, KNOWN, UNKNOWN, WRONG)
HISTORY = st.one_of(
    st.lists(KNOWN, min_size=1, max_size=12), st.lists(ITEM, max_size=12), st.tuples(KNOWN), KNOWN, st.integers()
)
REQUEST = st.one_of(
    st.lists(st.lists(KNOWN, min_size=1, max_size=12), min_size=1, max_size=4), st.lists(HISTORY, max_size=4), HISTORY
)
K = st.one_of(st.integers(1, 20), st.integers(-2, 20), st.floats(), st.booleans(), st.text(max_size=2))


def expected_error(histories: object, k: object) -> type[Exception] | None:
    """What `recommend` documents for this request, checked in its order: `k`, types, ids, empty histories."""
    if isinstance(k, bool) or not isinstance(k, int):
        return TypeError
    if k < 1:
        return ValueError
    if not isinstance(histories, (list, tuple)) or not all(
        isinstance(h, (list, tuple)) and all(isinstance(item, str) for item in h) for h in histories
    ):
        return TypeError
    if any(item not in KNOWN_IDS for h in histories for item in h):
        return UnknownItemError
    if any(not h for h in histories):
        return ValueError
    return None


@settings(max_examples=30, deadline=None)
@given(histories=REQUEST, k=K)
@example(histories=HISTORIES, k=10)
def test_recommend_returns_k_distinct_known_items_or_the_documented_error(
    recommender: OnnxRecommender, histories: object, k: object
) -> None:
    expected = expected_error(histories, k)
    if expected is not None:
        with pytest.raises(expected) as error:
            recommender.recommend(histories, k=k)  # type: ignore[arg-type]  # a wrong type on purpose
        assert type(error.value) is expected
        return
    recommended = recommender.recommend(histories, k=k)  # type: ignore[arg-type]  # a wrong type on purpose
    assert len(recommended) == len(histories)
    assert set(recommender.item_ids) == KNOWN_IDS
    for items, history in zip(recommended, histories, strict=True):
        assert len(items) == k == len(set(items)) and set(items) <= KNOWN_IDS and not set(items) & set(history)
