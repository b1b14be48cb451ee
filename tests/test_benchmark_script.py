"""The benchmark scripts run end to end (real data: on the small toy set, one epoch per model; side network: a
few items)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

PROJECT = Path(__file__).resolve().parents[1]

# Each runs a benchmark end to end in a subprocess (10 to 25 s): the slow set.
pytestmark = pytest.mark.slow


def json_report(command: list[str], timeout: int = 600) -> Any:
    """The one JSON object a benchmark command prints, run from the project root (it must succeed)."""
    result = subprocess.run(command, cwd=PROJECT, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def test_real_data_benchmark_prints_one_json_object(toy_root: Path, cache_dir: Path, tmp_path: Path) -> None:
    """Two of the rows over two seeds (one epoch each), plus the untrained rows (popularity, and
    the text similarity from the content row's features), then a second call that keeps every run."""
    command = [
        sys.executable,
        "benchmarks/real_data.py",
        "--data",
        "toy",
        "--data-root",
        str(toy_root),
        "--epochs",
        "1",
        "--models",
        "sasrec-id, full softmax",
        "crossan-t + ID",
        "--seeds",
        "1",
        "2",
        "--cache-dir",
        str(cache_dir),
        "--out",
        str(tmp_path / "bench"),
        "--json",
    ]
    report = json_report(command, timeout=900)
    rows = ("popularity", "text similarity, untrained", "sasrec-id, full softmax", "crossan-t + ID")
    assert set(report) == {*rows, "details"}
    for name in rows:
        assert set(report[name]) >= {"HR@10", "HR@20", "NDCG@10", "NDCG@20", "seconds_per_epoch"}
        assert 0 <= report[name]["NDCG@10"] <= report[name]["HR@10"] <= 1
    details = report["details"]
    assert details["seeds"] == [1, 2] and details["reference"] == "sasrec-id, full softmax"
    trained = details["rows"]
    assert 0 < trained["text similarity, untrained"]["valid_ndcg10"] <= 1
    for name in rows[2:]:
        per_seed = trained[name]["test_ndcg10_per_seed"]
        assert len(per_seed) == 2 and abs(sum(per_seed) / 2 - report[name]["NDCG@10"]) < 1e-9
        assert trained[name]["seconds_per_epoch"] > 0
    assert trained["crossan-t + ID"]["recipe"]["item_id_term"] is True
    assert trained["sasrec-id, full softmax"]["recipe"]["full_softmax"] is True
    assert details["paired_t_tests"]["crossan-t + ID"]["NDCG@10"]["p_value"] <= 1
    assert set(details["paired_t_tests"]) == {"crossan-t + ID"}
    again = subprocess.run(command, cwd=PROJECT, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0 and "finished, kept" in again.stderr
    assert json.loads(again.stdout)["crossan-t + ID"] == report["crossan-t + ID"]


def test_side_network_benchmark_prints_the_four_timings() -> None:
    """The side-network benchmark's JSON has the documented keys (timings are not asserted)."""
    report = json_report([sys.executable, "benchmarks/side_network.py", "--items", "8", "--steps", "7", "--json"])
    assert set(report) == {"crossan-tiva", "crossan-tiva-per-tower", "iisan-e-tiva@512", "iisan-e-tiva@1024"}
    assert all(set(entry) == {"ms_per_step"} and entry["ms_per_step"] > 0 for entry in report.values())


def test_new_items_benchmark_compares_served_states_with_pytorch() -> None:
    """Tiny text backbone: the JSON has one entry per modality, and the served
    states match PyTorch's (the script checks the two paths on the same contents)."""
    report = json_report(
        [
            sys.executable,
            "benchmarks/new_items.py",
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
    )
    assert set(report) == {"text"}
    for entry in report.values():
        assert 0 < entry["max_abs_error"] < 1e-3
        assert entry["pytorch_items_per_second"] > 0 and entry["onnx_items_per_second"] > 0
        assert entry["cache_bytes_per_item"] == 7 * 64 * 2


def test_efficiency_benchmark_reports_every_model_and_the_caching_row() -> None:
    """Tiny widths, two models, one timed step: the JSON has the documented keys, the improvement
    rows are absent without IISAN-E, and caching pays back against the uncached model."""
    report = json_report(
        [
            sys.executable,
            "benchmarks/efficiency.py",
            "--widths",
            "tiny",
            "--models",
            "crossan-tiva",
            "lora-ti",
            "--users",
            "4",
            "--steps",
            "1",
            "--json",
        ]
    )
    assert set(report) == {"crossan-tiva", "lora-ti", "caching", "setting"}
    for model in ("crossan-tiva", "lora-ti"):
        assert set(report[model]) >= {"seconds_per_step", "peak_memory_mb", "trainable_parameters", "seconds_per_epoch"}
        assert report[model]["seconds_per_step"] > 0 and report[model]["peak_memory_mb"] >= 0
    assert report["crossan-tiva"]["trainable_parameters"] == 2_002_448
    assert set(report["caching"]["break_even_epochs"]) == {"lora-ti"}
    assert report["setting"]["users_per_step"] == 4 and "extrapolated" in report["setting"]["epoch"]


def test_negatives_cost_benchmark_times_every_option_against_in_batch(toy_root: Path, cache_dir: Path) -> None:
    """Every option of each model gets a row; the ID term and the prior only for the content
    model; seconds per epoch are seconds per step times the batches of a full sliding-window epoch."""
    from crossan.zoo.data import load_dataset
    from crossan.zoo.training.trainer import training_windows

    report = json_report(
        [
            sys.executable,
            "benchmarks/negatives_cost.py",
            "--data",
            "toy",
            "--data-root",
            str(toy_root),
            "--cache-dir",
            str(cache_dir),
            "--steps",
            "1",
            "--rounds",
            "1",
            "--sampled",
            "64",
            "--memory",
            "128",
            "--json",
        ]
    )
    options = ["in-batch", "+ 64 uniform", "+ 64 popularity", "+ memory 128", "full softmax"]
    assert list(report) == ["sasrec-id", "crossan-t"]
    assert list(report["sasrec-id"]) == [*options, "cosine / 0.1"]
    assert list(report["crossan-t"]) == [*options, "+ ID term", "cosine / 0.1", "cosine + prior 0.25"]
    windows, _ = training_windows(load_dataset("toy", toy_root, cache_dir), 11, sliding=True)
    for rows in report.values():
        assert rows["in-batch"]["ratio_to_in_batch"] == 1.0
        for entry in rows.values():
            assert entry["steps_per_epoch"] == -(-len(windows) // 64)
            assert entry["seconds_per_step"] > 0
            assert abs(entry["seconds_per_epoch"] - entry["seconds_per_step"] * entry["steps_per_epoch"]) < 1e-9


def test_real_data_benchmark_tunes_every_family_with_the_same_budget(
    toy_root: Path, cache_dir: Path, tmp_path: Path
) -> None:
    """`--tune 2`: each family's study reaches two finished trials, and its best recipe is one more
    row, trained over the seeds and compared like the hand rows. `--tune-only` first runs the
    studies alone; the full command then finds them finished and trains no trial again."""
    command = [
        sys.executable,
        "benchmarks/real_data.py",
        "--data",
        "toy",
        "--data-root",
        str(toy_root),
        "--epochs",
        "2",
        "--patience",
        "2",
        "--models",
        "sasrec-id",
        "crossan-t",
        "--seeds",
        "1",
        "--tune",
        "2",
        "--cache-dir",
        str(cache_dir),
        "--out",
        str(tmp_path / "bench"),
        "--json",
    ]
    tuned = json_report([*command, "--tune-only"], timeout=1800)
    assert {preset: summary["finished_trials"] for preset, summary in tuned["tuning"].items()} == {
        "sasrec-id": 2,
        "crossan-t": 2,
    }
    assert sorted(path.name for path in (tmp_path / "bench").iterdir()) == ["tune"], "--tune-only trained a row"
    trials = {path: path.stat().st_mtime for path in (tmp_path / "bench" / "tune").glob("*/trials/*/config.json")}
    assert len(trials) >= 2
    report = json_report(command, timeout=1800)
    tuning = report["details"]["tuning"]
    assert set(tuning) == {"sasrec-id", "crossan-t"}
    for preset, summary in tuning.items():
        assert summary["finished_trials"] == 2 and summary["recipe"]["epochs"] == 2
        row = report["details"]["rows"][f"{preset}, tuned"]
        assert row["recipe"] == {k: v for k, v in summary["recipe"].items()}
        assert (tmp_path / "bench" / "tune" / preset / "best-recipe.json").is_file()
    assert report["details"]["reference"] in ("sasrec-id", "sasrec-id, tuned")
    assert {path: path.stat().st_mtime for path in trials} == trials, "a finished trial was trained again"


def amazon_from_toy(toy_root: Path, root: Path, users: slice) -> Path:
    """The toy set's titles and a slice of its users as an Amazon-layout folder (`items.tsv`, `users.tsv`)."""
    root.mkdir(parents=True)
    titles = (toy_root / "toy_title_en.csv").read_text().splitlines()[1:]
    (root / "items.tsv").write_text("".join(line.replace(",", "\t", 1) + "\n" for line in titles))
    lines = (toy_root / "toy_pairs.tsv").read_text().splitlines()[users]
    (root / "users.tsv").write_text("\n".join(lines) + "\n")
    return root


def test_real_data_benchmark_over_two_catalogues_reports_their_geometric_mean(
    toy_root: Path, cache_dir: Path, tmp_path: Path
) -> None:
    """Two data roots: each catalogue is benchmarked in its own folder, and the summary compares,
    per catalogue, the content row best on validation with the `sasrec-id` row best on validation,
    beside the untrained rows, with the geometric mean of the ratios."""
    roots = [
        amazon_from_toy(toy_root, tmp_path / name, users)
        for name, users in (("first", slice(0, 500)), ("second", slice(300, 800)))
    ]
    command = [
        sys.executable,
        "benchmarks/real_data.py",
        "--data-root",
        *map(str, roots),
        "--epochs",
        "1",
        "--models",
        "sasrec-id",
        "crossan-t",
        "crossan-t + prior, chosen on validation",
        "--seeds",
        "1",
        "--tune",
        "1",
        "--tune-pruner",
        "hyperband",
        "--tune-valid-users",
        "100",
        "--cache-dir",
        str(cache_dir),
        "--out",
        str(tmp_path / "bench"),
        "--json",
    ]
    report = json_report(command, timeout=1800)
    assert set(report["catalogues"]) == set(report["summary"]["catalogues"]) == {"first", "second"}
    assert sorted(path.name for path in (tmp_path / "bench").iterdir()) == ["first", "second"]
    tuning = {name: report["catalogues"][name]["tuning"] for name in ("first", "second")}
    for preset in ("sasrec-id", "crossan-t"):
        # The second catalogue's one trial is the first catalogue's best values (the warm start),
        # validated on 100 users and ranked again on all of them.
        assert tuning["second"][preset]["recipe"] == tuning["first"][preset]["recipe"]
        assert tuning["second"][preset]["search_valid_users"] == 100
        assert "valid_users" not in tuning["second"][preset]["recipe"]
    ratios = []
    for name, entry in report["summary"]["catalogues"].items():
        rows = report["catalogues"][name]["rows"]
        trained = {row: result for row, result in rows.items() if result.get("preset")}
        content = [row for row, result in trained.items() if result["preset"] != "sasrec-id"]
        ids = [row for row, result in trained.items() if result["preset"] == "sasrec-id"]
        assert len(content) == 3 and len(ids) == 2
        assert entry["best_content"] == max(content, key=lambda row: rows[row]["valid_ndcg10"])
        assert entry["reference"] == max(ids, key=lambda row: rows[row]["valid_ndcg10"])
        reference = rows[entry["reference"]]["test"]["NDCG@10"]
        assert entry["ratio"] == rows[entry["best_content"]]["test"]["NDCG@10"] / reference
        similarity_cold = rows["text similarity, untrained"]["test_cold"]["NDCG@10"]
        assert entry["similarity_cold_ndcg10"] == pytest.approx(similarity_cold, nan_ok=True)
        assert entry["popularity_ndcg10"] == rows["popularity"]["test"]["NDCG@10"]
        chosen = json.loads(
            (
                tmp_path / "bench" / name / "real-data" / "crossan-t-prior-chosen-on-validation-seed1" / "metrics.json"
            ).read_text()
        )["chosen_on_validation"]
        assert set(chosen) == {"backbone_prior_inference_weight", "backbone_prior_cold_scale"}
        ratios.append(entry["ratio"])
    assert report["summary"]["geometric_mean_ratio"] == pytest.approx((ratios[0] * ratios[1]) ** 0.5, rel=1e-12)


def test_batch_recommendations_benchmark_times_both_indexes_and_matches_the_recommender(tmp_path: Path) -> None:
    """Two users files over 2000 items: every run writes k rows per user, the sampled lists of
    both indexes are the recommender's, and only the inputs are left in the work folder."""
    report = json_report(
        [
            sys.executable,
            "benchmarks/batch_recommendations.py",
            "--items",
            "2000",
            "--users",
            "300",
            "600",
            "--threads",
            "1",
            "--workdir",
            str(tmp_path),
            "--json",
        ]
    )
    runs = {(run["users"], run["index"]): run for run in report["runs"]}
    assert set(runs) == {(users, index) for users in (300, 600) for index in ("exact", "faiss")}
    for (users, _), run in runs.items():
        assert run["rows"] == users * 10
        assert run["seconds"] > 0 and run["users_per_s"] > 0 and run["peak_mb"] > 0 and run["output_mb"] > 0
    assert set(report["sample_check"]) == {"exact", "faiss"}
    for check in report["sample_check"].values():
        assert check["identical"] == check["sample"] == 200
    assert report["setup"]["items"] == 2000 and report["setup"]["omp_num_threads"] == "1"
    assert report["setup"]["threads"] == 1  # also passed to the command as its --threads
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "export-2000",
        "users-300-of-2000.tsv",
        "users-600-of-2000.tsv",
    ]
