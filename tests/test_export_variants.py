"""Tests for the optimised and int8 graphs of an export (`--optimize`, `--quantize int8`): every variant
is written, recorded with its size, hash and error in `validation.json`, runs in onnxruntime within its
tolerance of the float32 graph, is refused on load once tampered with, is served by name, and an
export whose variant misses its tolerance fails as a whole.

Tolerances: max abs error over the float32 output's largest magnitude, 1e-5 for the optimised graphs
and 0.15 for int8 (`crossan.export.variant_export`).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from crossan.export import variant_export as variant_module
from crossan.export.content import ContentEncoder
from crossan.export.errors import ExportFileError, ValueMismatchError
from crossan.export.exporter import export_run
from crossan.export.item_table import TABLE_FILE, load_item_table
from crossan.export.providers import CPU, CUDA
from crossan.export.publishing import is_export_file
from crossan.export.ranking import history_window
from crossan.export.reading import RECORDS_KEY, REPORT_FILE, file_record
from crossan.export.serve import OnnxRecommender
from crossan.export.variants import FLOAT32, INT8, OPTIMIZED, VARIANT_FILE, variant_file, variant_providers
from crossan.zoo.core.errors import ConfigError, MissingFileError
from crossan.zoo.runs.run import open_run

REPO = Path(__file__).resolve().parents[1]
ENCODERS = ("item_encoder", "user_encoder")
VARIANTS = (OPTIMIZED, INT8)


def _export(run: Path, out: Path, *options: str) -> Path:
    from crossan.export.__main__ import main as export_main

    assert export_main(["--run", str(run), "--out", str(out), *options]) == 0
    return out


@pytest.fixture(scope="module")
def variant_export(toy_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The toy run exported with `--optimize --quantize int8` (about 15 s)."""
    return _export(toy_run, tmp_path_factory.mktemp("variants") / "export", "--optimize", "--quantize", "int8")


def _relative_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / np.abs(want).max())


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=[CPU])


def test_variant_file_names() -> None:
    assert variant_file("user_encoder.onnx", INT8) == "user_encoder.int8.onnx"
    assert variant_file("text_backbone.onnx", OPTIMIZED) == "text_backbone.opt.onnx"
    assert variant_file("item_encoder.onnx", "float32") == "item_encoder.onnx"
    for name in ("item_encoder.int8.onnx", "user_encoder.opt.onnx", "audio_backbone.int8.onnx"):
        assert VARIANT_FILE.fullmatch(name) and is_export_file(name)
    assert not is_export_file("user_encoder.fp16.onnx") and not is_export_file("notes.int8.onnx")
    with pytest.raises(ConfigError, match="variant must be one of"):
        variant_file("user_encoder.onnx", "int4")
    assert variant_providers(INT8, None) == [CPU]
    with pytest.raises(ConfigError, match="written for onnxruntime's CPUExecutionProvider"):
        variant_providers(INT8, [CUDA, CPU])


def test_every_variant_is_written_and_recorded_within_its_tolerance(variant_export: Path) -> None:
    report = json.loads((variant_export / REPORT_FILE).read_text())
    assert set(report["variants"]) == set(VARIANTS)
    for variant in VARIANTS:
        entry = report["variants"][variant]
        assert entry["tolerance"] == variant_export_tolerance(variant)
        assert [f["file"] for f in entry["files"]] == [f"{name}.{variant}.onnx" for name in ENCODERS]
        for record in entry["files"]:
            path = variant_export / record["file"]
            assert path.is_file() and is_export_file(path.name)
            assert report[RECORDS_KEY][path.name] == file_record(path)
            assert {k: record[k] for k in ("bytes", "sha256")} == file_record(path)
            assert record["relative_error"] <= record["tolerance"] == entry["tolerance"]
            assert record["max_abs_error"] == pytest.approx(record["relative_error"] * record["output_scale"])
        for key in ("top_k_agreement", "top_k_agreement_float32_table"):
            agreement = entry[key]
            assert agreement["num_users"] > 0 and 0 <= agreement["fraction"] <= agreement["mean_overlap"] <= 1
    optimized, int8 = (report["variants"][v]["files"] for v in VARIANTS)
    assert all(record["relative_error"] == 0 for record in optimized)  # extended optimisation is exact here
    assert all(0 < record["relative_error"] for record in int8)
    assert all(record["quantized"]["MatMul"] > 0 and record["bytes"] < record["float32_bytes"] / 2 for record in int8)
    assert all(record["shape_inference"] == "symbolic" for record in int8)


def variant_export_tolerance(variant: str) -> float:
    return {OPTIMIZED: variant_module.OPTIMIZED_TOLERANCE, INT8: variant_module.INT8_TOLERANCE}[variant]


def test_variants_run_within_tolerance_of_float32(toy_run: Path, variant_export: Path) -> None:
    """Fresh inputs, not the export's: 64 catalogue items' cached states, and 64 users' histories
    over the exported item table."""
    run = open_run(toy_run)
    item_session = _session(variant_export / "item_encoder.onnx")
    item_inputs = run.features.gather(torch.arange(64) * (run.dataset.num_items // 64))
    item_feed = {arg.name: t.numpy() for arg, t in zip(item_session.get_inputs(), item_inputs, strict=True)}
    table, _ = load_item_table(variant_export / TABLE_FILE)
    rows, padding_mask = history_window(
        [run.dataset.history(u, "test") for u in range(64)], run.model.config.max_seq_len
    )
    feeds = {"item_encoder": item_feed, "user_encoder": {"item_embeddings": table[rows], "padding_mask": padding_mask}}
    for name in ENCODERS:
        (want,) = _session(variant_export / f"{name}.onnx").run(None, feeds[name])
        for variant in VARIANTS:
            (got,) = _session(variant_export / f"{name}.{variant}.onnx").run(None, feeds[name])
            assert got.shape == want.shape and got.dtype == want.dtype
            assert _relative_error(got, want) <= variant_export_tolerance(variant), (name, variant)


def test_a_variant_is_served_by_name(toy_run: Path, variant_export: Path) -> None:
    run = open_run(toy_run)
    histories = [[run.dataset.item_ids[i - 1] for i in run.dataset.history(u, "test")] for u in range(20)]
    float32 = OnnxRecommender(variant_export).recommend(histories, k=10)
    for variant in VARIANTS:
        recommender = OnnxRecommender(variant_export, variant=variant)
        assert recommender.providers == [CPU]
        served = recommender.recommend(histories, k=10)
        assert [len(items) for items in served] == [10] * len(histories)
        overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(float32, served, strict=True)])
        assert overlap >= (1.0 if variant == OPTIMIZED else 0.8), variant
    with pytest.raises(ConfigError, match="written for onnxruntime's CPUExecutionProvider"):
        OnnxRecommender(variant_export, providers=[CUDA], variant=INT8)


def test_a_missing_variant_names_the_option_that_writes_it(toy_export: Path) -> None:
    with pytest.raises(MissingFileError, match=r"user_encoder\.int8\.onnx: missing; .*--quantize int8"):
        OnnxRecommender(toy_export, variant=INT8)
    with pytest.raises(MissingFileError, match=r"item_encoder\.opt\.onnx: missing; .*--optimize"):
        ContentEncoder(toy_export, [CPU], OPTIMIZED)


@pytest.mark.parametrize("name", ["user_encoder.int8.onnx", "item_encoder.opt.onnx"])
def test_a_tampered_variant_is_refused_on_load(variant_export: Path, tmp_path: Path, name: str) -> None:
    copy = Path(shutil.copytree(variant_export, tmp_path / "export"))
    path = copy / name
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # the last byte of the last weight: still a loadable graph
    path.write_bytes(bytes(data))
    with pytest.raises(ExportFileError, match=f"{name}: sha256 .* the file changed after the export"):
        if name.startswith("user_encoder"):
            OnnxRecommender(copy, variant=name.split(".")[1])
        else:
            ContentEncoder(copy, [CPU], name.split(".")[1])


def test_a_variant_over_its_tolerance_fails_the_export(
    toy_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(variant_module, "INT8_TOLERANCE", 0.0)
    out = tmp_path / "export"
    with pytest.raises(
        ValueMismatchError, match=r"item_encoder\.int8\.onnx: max abs error .* over the int8 tolerance 0"
    ):
        export_run(toy_run, out, quantize=INT8)
    assert not out.exists() and not list(tmp_path.iterdir())


def _weight_scale_sizes(path: Path) -> set[int]:
    """The sizes of the scales of an int8 graph's quantised weights (1: one scale per tensor)."""
    model = onnx.load(str(path))
    weights = {t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8}
    scales = {f"{name.removesuffix('_quantized')}_scale" for name in weights}
    return {int(np.prod(t.dims)) for t in model.graph.initializer if t.name in scales}


@pytest.mark.slow
def test_backbone_variants_are_written_checked_and_serve_new_items(toy_run: Path, tmp_path: Path) -> None:
    """`--with-backbones`: the text and image backbones through the transformer optimiser, video and
    audio through the offline one; every int8 backbone within tolerance; new items from raw content
    through the int8 graphs land near their float32 embeddings (about two minutes)."""
    out = _export(toy_run, tmp_path / "export", "--with-backbones", "--optimize", "--quantize", "int8")
    report = json.loads((out / REPORT_FILE).read_text())
    backbones = [f"{m}_backbone" for m in ("text", "image", "video", "audio")]
    for variant in VARIANTS:
        entry = report["variants"][variant]
        files = {record["graph"]: record for record in entry["files"]}
        assert set(files) == {*ENCODERS, *backbones}
        for record in files.values():
            assert record["relative_error"] <= record["tolerance"]
            assert report[RECORDS_KEY][record["file"]] == file_record(out / record["file"])
        assert entry["top_k_agreement"]["reembedded_items"] == 32
    optimized = {record["graph"]: record for record in report["variants"][OPTIMIZED]["files"]}
    for graph in ("text_backbone", "image_backbone"):
        assert "optimize_model" in optimized[graph]["method"] and "SkipLayerNormalization" in optimized[graph]["fused"]
    assert "extended graph optimisation" in optimized["video_backbone"]["method"]
    quantized = {record["graph"]: record for record in report["variants"][INT8]["files"]}
    for graph in backbones:  # one scale per output channel for the backbones, per tensor for the encoders
        assert "per_channel=True" in quantized[graph]["method"]
        assert _weight_scale_sizes(out / quantized[graph]["file"]) - {1}
    for graph in ENCODERS:
        assert "per_channel=False" in quantized[graph]["method"]
        assert _weight_scale_sizes(out / quantized[graph]["file"]) == {1}

    run = open_run(toy_run)
    rows = [3, 40, 77]
    titles, covers, videos = (
        [str(source) for source in sources]
        for sources in (
            [run.dataset.required_titles()[r] for r in rows],
            [run.dataset.required_cover_paths()[r] for r in rows],
            [run.dataset.required_video_paths()[r] for r in rows],
        )
    )
    content = {"text": titles, "image": covers, "video": videos, "audio": videos}
    want = ContentEncoder(out, [CPU]).embed(content)
    got = ContentEncoder(out, [CPU], INT8).embed(content)
    assert _relative_error(got, want) <= 0.2  # two int8 stages: backbones, then the item encoder


@pytest.mark.slow
def test_variants_benchmark_ranks_the_run_through_each_variant(toy_run: Path, variant_export: Path) -> None:
    """`benchmarks/variants.py --run`: float32's served test NDCG@10 is the run's own (PyTorch), and
    every variant is measured on the tiny text backbone and the run's user encoder (about 40 s)."""
    command = [
        sys.executable,
        "benchmarks/variants.py",
        "--run",
        str(toy_run),
        "--export",
        str(variant_export),
        "--widths",
        "tiny",
        "--modalities",
        "text",
        "--items",
        "4",
        "--batch",
        "2",
        "--repeats",
        "1",
        "--json",
    ]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    ranking = report["ranking"]
    assert ranking[FLOAT32]["NDCG@10"] == pytest.approx(ranking["details"]["pytorch_test"]["NDCG@10"], abs=1e-3)
    for variant in (FLOAT32, *VARIANTS):
        assert 0 < ranking[variant]["NDCG@10"] <= ranking[variant]["HR@10"] <= 1
        assert report["backbones"]["text"][variant]["items_per_second"] > 0
        assert report["user_encoder"][variant]["latency_ms_b1"] > 0
    assert ranking[OPTIMIZED]["agreement"]["mean_overlap"] == 1.0
    int8 = ranking[INT8]
    assert int8["ndcg_change"] == pytest.approx(int8["NDCG@10"] / ranking[FLOAT32]["NDCG@10"] - 1, abs=1e-6)
    assert (int8["ndcg_change_standard_error"] > 0) == (int8["NDCG@10"] != ranking[FLOAT32]["NDCG@10"])
    assert 0 < int8["p_value"] <= 1


def test_new_items_embedded_by_a_variant_are_not_saved_into_the_float32_table(variant_export: Path) -> None:
    recommender = OnnxRecommender(variant_export, variant="int8")
    with pytest.raises(ValueError, match="float32 item table"):
        recommender.add_items(["new-item"], {"text": ["a title"]}, save=True)


@pytest.mark.slow
def test_a_graph_symbolic_shape_inference_cannot_follow_is_quantised_with_onnx_s_own(
    toy_root: Path, cache_dir: Path, tmp_path: Path
) -> None:
    """crossan-t with the frozen prior: its item encoder's pooled history (an Expand) stops ONNX
    Runtime's symbolic shape inference; the int8 graph is prepared with ONNX's shape inference
    instead, says so, and passes the same tolerance."""
    run = tmp_path / "run"
    subprocess.run(
        [
            sys.executable,
            "train.py",
            *("--preset", "crossan-t", "--data", "microlens", "--data-root", str(toy_root)),
            *("--cache-dir", str(cache_dir), "--epochs", "1", "--run-dir", str(run)),
            *("--set", "score_temperature=0.1", "--set", "backbone_prior_weight=0.25"),
        ],
        cwd=Path(__file__).resolve().parents[1],
        check=True,
        capture_output=True,
    )
    export = _export(run, tmp_path / "export", "--quantize", "int8")
    records = {r["file"]: r for r in json.loads((export / REPORT_FILE).read_text())["variants"][INT8]["files"]}
    assert records["item_encoder.int8.onnx"]["shape_inference"] == "onnx"
    assert {r["shape_inference"] for r in records.values()} <= {"symbolic", "onnx"}
    assert all(r["relative_error"] <= r["tolerance"] for r in records.values())
