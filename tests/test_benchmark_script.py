"""The benchmark scripts run end to end (real data: on the small toy set, one epoch per model; side network: a few items)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]


def test_real_data_benchmark_prints_one_json_object(toy_root: Path, cache_dir: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "benchmarks/real_data.py", "--data", "toy", "--data-root", str(toy_root), "--epochs", "1",
         "--cache-dir", str(cache_dir), "--out", str(tmp_path / "bench"), "--json"],
        cwd=PROJECT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert {"popularity", "sasrec-id", "crossan-t"} <= set(report)
    for name in ("popularity", "sasrec-id", "crossan-t"):
        assert set(report[name]) >= {"HR@10", "HR@20", "NDCG@10", "NDCG@20", "seconds_per_epoch"}
        assert 0 <= report[name]["NDCG@10"] <= report[name]["HR@10"] <= 1
    assert report["sasrec-id"]["seconds_per_epoch"] > 0
    details = report["details"]
    parameters = {name: details["models"][name]["trainable_parameters"] for name in ("crossan-t", "sasrec-id")}
    assert parameters["crossan-t"] > parameters["sasrec-id"]
    assert details["models"]["crossan-t"]["text_max_tokens"] == 64
    assert "text_max_tokens" not in details["models"]["sasrec-id"]
    p_value = details["crossan-t_vs_sasrec-id"]["NDCG@10"]["p_value"]
    assert 0 <= p_value <= 1


def test_side_network_benchmark_prints_the_four_timings() -> None:
    """The side-network benchmark's JSON has the documented keys (timings are not asserted)."""
    result = subprocess.run(
        [sys.executable, "benchmarks/side_network.py", "--items", "8", "--steps", "7", "--json"],
        cwd=PROJECT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert set(report) == {"crossan-tiva", "crossan-tiva-per-tower", "iisan-e-tiva@512", "iisan-e-tiva@1024"}
    assert all(set(entry) == {"ms_per_step"} and entry["ms_per_step"] > 0 for entry in report.values())


def test_new_items_benchmark_compares_served_states_with_pytorch() -> None:
    """Tiny text backbone: the JSON has one entry per modality, and the served
    states match PyTorch's (the script checks the two paths on the same contents)."""
    result = subprocess.run(
        [sys.executable, "benchmarks/new_items.py", "--widths", "tiny", "--modalities", "text",
         "--items", "4", "--batch", "2", "--repeats", "1", "--json"],
        cwd=PROJECT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert set(report) == {"text"}
    for entry in report.values():
        assert 0 < entry["max_abs_error"] < 1e-3
        assert entry["pytorch_items_per_second"] > 0 and entry["onnx_items_per_second"] > 0
        assert entry["cache_bytes_per_item"] == 7 * 64 * 2


def test_efficiency_benchmark_reports_every_model_and_the_caching_row() -> None:
    """Tiny widths, two models, one timed step: the JSON has the documented keys, the improvement
    rows are absent without IISAN-E, and caching pays back against the uncached model."""
    result = subprocess.run(
        [sys.executable, "benchmarks/efficiency.py", "--widths", "tiny", "--models", "crossan-tiva", "lora-ti",
         "--users", "4", "--steps", "1", "--json"],
        cwd=PROJECT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert set(report) == {"crossan-tiva", "lora-ti", "caching", "setting"}
    for model in ("crossan-tiva", "lora-ti"):
        assert set(report[model]) >= {"seconds_per_step", "peak_memory_mb", "trainable_parameters", "seconds_per_epoch"}
        assert report[model]["seconds_per_step"] > 0 and report[model]["peak_memory_mb"] >= 0
    assert report["crossan-tiva"]["trainable_parameters"] == 2_002_448
    assert set(report["caching"]["break_even_epochs"]) == {"lora-ti"}
    assert report["setting"]["users_per_step"] == 4 and "extrapolated" in report["setting"]["epoch"]
