"""Zero-shot: a trained run ranks a catalogue it never trained on, nothing trained on it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from rich.console import Console
from scripts import run_main

from crossan.export.cli import main as export_main
from crossan.export.serve import OnnxRecommender
from crossan.zoo.cli.evaluate import main as evaluate_main
from crossan.zoo.cli.train import main as train_main
from crossan.zoo.data import load_dataset
from crossan.zoo.data.toy import generate_toy
from crossan.zoo.models import load_model
from crossan.zoo.runs.zero_shot import open_zero_shot
from crossan.zoo.training.evaluation import evaluate_model


@pytest.fixture(scope="module")
def other_catalogue(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A toy catalogue of other items and users than the session's (another seed, another size),
    its titles made unique (the toy set repeats some, and equal embeddings tie in every ranking)."""
    root = generate_toy(tmp_path_factory.mktemp("other") / "toy", seed=1, num_items=96, num_users=300)
    titles = root / "toy_title_en.csv"
    header, *lines = titles.read_text().splitlines()
    titles.write_text("\n".join([header, *(f"{line} take {number}" for number, line in enumerate(lines))]) + "\n")
    return root


def train(run_dir: Path, toy_root: Path, cache_dir: Path, preset: str, *settings: str) -> Path:
    result = run_main(
        train_main,
        "--preset",
        preset,
        "--data",
        "microlens",
        "--data-root",
        str(toy_root),
        "--cache-dir",
        str(cache_dir),
        "--epochs",
        "1",
        "--run-dir",
        str(run_dir),
        *(option for setting in settings for option in ("--set", setting)),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return run_dir


@pytest.fixture(scope="module")
def prior_run(toy_root: Path, cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """crossan-t with the frozen prior and its cold-item scale: the model reads catalogue rows."""
    return train(
        tmp_path_factory.mktemp("prior-run") / "run",
        toy_root,
        cache_dir,
        "crossan-t",
        "score_temperature=0.1",
        "backbone_prior_weight=0.25",
        "backbone_prior_cold_scale=1.5",
    )


def evaluate(*args: str) -> dict:
    result = run_main(evaluate_main, *args, "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout)


def test_a_content_run_ranks_another_catalogue_as_its_own_model_ranks_new_items(
    prior_run: Path, other_catalogue: Path, tmp_path: Path
) -> None:
    """The zero-shot model is the run's model with an item table of the other catalogue: its
    item embeddings are those the trained model gives the same items passed as new items (row
    -1: none occurs in its training), and its report ranks the other catalogue's users."""
    cache = tmp_path / "cache"
    report = evaluate(
        "--run", str(prior_run), "--data", "microlens", "--data-root", str(other_catalogue), "--cache-dir", str(cache)
    )
    other = load_dataset("microlens", other_catalogue, cache)
    recorded = json.loads((prior_run / "config.json").read_text())["data"]
    assert report["zero_shot"] is True and report["trained_on"] == recorded["name"]
    assert recorded["fingerprint"] != other.fingerprint()
    assert report["run"] == "run (zero-shot)" and report["num_users"] == other.num_users == 300

    zero_shot = open_zero_shot(prior_run, other, "cpu", Console(quiet=True), cache)
    trained = load_model(prior_run)
    assert zero_shot.model.config.num_items == other.num_items == 96 != trained.config.num_items
    assert not zero_shot.model.cold_items.seen.any() and trained.cold_items.seen.any()
    features = zero_shot.features
    content_only = features.with_item_rows(False)
    as_new_items = trained.catalogue_embeddings(
        lambda rows: (*content_only.gather(rows), torch.full_like(rows, -1)), other.num_items
    )
    torch.testing.assert_close(zero_shot.model.catalogue_embeddings(features.gather, other.num_items), as_new_items)
    result = evaluate_model(zero_shot.model, other, features, "test")
    assert report["metrics"] == pytest.approx(result.metrics)
    assert any(cache.rglob("*")), "the other catalogue's features were built under --cache-dir"


def test_an_export_for_another_catalogue_serves_what_zero_shot_evaluation_ranks(
    prior_run: Path, other_catalogue: Path, tmp_path: Path
) -> None:
    """`--catalogue`: the export's item table is the other catalogue's, validated against the
    zero-shot model, and served top-10 lists hit the test items as often as evaluation says."""
    cache, out = tmp_path / "cache", tmp_path / "export"
    catalogue = ["--data", "microlens", "--cache-dir", str(cache)]
    result = run_main(
        export_main, "--run", str(prior_run), "--catalogue", str(other_catalogue), *catalogue, "--out", str(out)
    )
    assert result.returncode == 0, result.stderr[-2000:]
    other = load_dataset("microlens", other_catalogue, cache)
    validation = json.loads((out / "validation.json").read_text())
    assert validation["zero_shot"] is True and validation["catalogue"] == other.name
    served = OnnxRecommender(out)
    assert served.item_ids == other.item_ids
    users = range(other.num_users)
    histories = [[other.item_ids[row - 1] for row in other.history(user, "test")] for user in users]
    top = served.recommend(histories, k=10)
    hits = [other.item_ids[other.target(user, "test") - 1] in top[user] for user in users]
    report = evaluate("--run", str(prior_run), "--data-root", str(other_catalogue), *catalogue)
    assert sum(hits) / len(hits) == pytest.approx(report["metrics"]["HR@10"], abs=1e-6)  # float32 metrics


def test_export_catalogue_options_need_a_catalogue(prior_run: Path) -> None:
    result = run_main(export_main, "--run", str(prior_run), "--data", "amazon")
    assert result.returncode == 2 and result.stderr.startswith("error: --data and --cache-dir describe --catalogue")


def test_the_run_s_own_data_named_with_data_is_evaluated_as_trained(prior_run: Path, toy_root: Path) -> None:
    own = evaluate("--run", str(prior_run))
    named = evaluate("--run", str(prior_run), "--data", "microlens", "--data-root", str(toy_root))
    assert own["zero_shot"] is named["zero_shot"] is False
    assert named["metrics"] == own["metrics"] and named["run"] == own["run"] == "run"


def test_an_id_model_refuses_another_catalogue_in_one_line(
    toy_root: Path, cache_dir: Path, other_catalogue: Path, tmp_path: Path
) -> None:
    run = train(tmp_path / "id-run", toy_root, cache_dir, "sasrec-id")
    result = run_main(evaluate_main, "--run", str(run), "--data", "microlens", "--data-root", str(other_catalogue))
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"error: {run}: sasrec-id learns a vector per item of the catalogue it trained on"), line
    assert "item_embedding.weight" in line
