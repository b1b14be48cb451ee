"""The transfer benchmark end to end on three small Amazon-layout catalogues (slow set)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from scripts import run_main

from crossan.zoo.cli.evaluate import main as evaluate_main
from crossan.zoo.data.toy import generate_toy

PROJECT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def amazon_catalogue(root: Path, seed: int, num_items: int, num_users: int) -> Path:
    """A toy catalogue (titles and users) in the Amazon layout, named by its folder."""
    toy = generate_toy(root.parent / f"{root.name}-toy", seed=seed, num_items=num_items, num_users=num_users)
    root.mkdir(parents=True)
    titles = (toy / "toy_title_en.csv").read_text().splitlines()[1:]
    (root / "items.tsv").write_text("".join(line.replace(",", "\t", 1) + "\n" for line in titles))
    (root / "users.tsv").write_text((toy / "toy_pairs.tsv").read_text())
    return root


def test_the_transfer_benchmark_leaves_each_catalogue_out_in_turn(tmp_path: Path) -> None:
    """Two catalogues left out of three: each pretrained on the other two together; the zero-shot
    row is what evaluate.py says of the pretrained run there, the fine-tuned run starts from it,
    and each left-out catalogue's single run is set against the pretrained run that trained on it."""
    roots = [
        amazon_catalogue(tmp_path / name, seed, items, users)
        for name, seed, items, users in (("first", 3, 80, 200), ("second", 4, 96, 300), ("third", 5, 70, 250))
    ]
    cache, out = tmp_path / "cache", tmp_path / "transfer"
    command = [
        sys.executable,
        "benchmarks/transfer.py",
        "--data-root",
        *map(str, roots),
        "--left-out",
        "first",
        "second",
        "--seeds",
        "1",
        "--epochs",
        "1",
        "--cache-dir",
        str(cache),
        "--out",
        str(out),
        "--json",
    ]
    result = subprocess.run(command, cwd=PROJECT, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert set(report["left_out"]) == {"first", "second"}
    first = report["left_out"]["first"]
    assert first["pretrained_on"] == "second+third"
    assert set(first["rows"]) == {
        "popularity",
        "text similarity, untrained",
        "zero-shot",
        "fine-tuned",
        "crossan-t, from scratch",
        "sasrec-id, from scratch",
    }
    pretrained = out / "without-first" / "pretrained" / "pretrained-seed1"
    zero_shot = run_main(
        evaluate_main,
        *("--run", str(pretrained), "--data", "amazon", "--data-root", str(roots[0])),
        *("--cache-dir", str(cache), "--json"),
    )
    assert zero_shot.returncode == 0, zero_shot.stderr[-2000:]
    assert json.loads(zero_shot.stdout)["metrics"] == pytest.approx(first["rows"]["zero-shot"]["test"])
    fine_tuned = out / "first" / "fine-tuned" / "fine-tuned-from-seed1-seed1" / "config.json"
    config = json.loads(fine_tuned.read_text())
    assert config["train"]["init_from"] == str(pretrained.resolve()) and config["init_from"]["taken"]
    pretrained_metrics = json.loads((pretrained / "metrics.json").read_text())
    assert first["pretrained_in_domain"] == {
        name: [pretrained_metrics["catalogues"][name]["test"]["NDCG@10"]] for name in ("second", "third")
    }
    (check,) = report["in_domain"]["second"]
    alone = report["left_out"]["second"]["rows"]["crossan-t, from scratch"]["test"]["NDCG@10"]
    assert check["pretrained_without"] == "first" and check["alone_ndcg10"] == alone
    assert check["together_ndcg10"] == pretrained_metrics["catalogues"]["second"]["test"]["NDCG@10"]
    epochs = first["epochs_to_scratch_best"][0]
    assert epochs["scratch_best_epoch"] == 1 and epochs["fine_tuned_epoch"] in (1, None)
    assert first["paired_t_tests"]["fine-tuned vs crossan-t, from scratch"]["NDCG@10"]["p_value"] <= 1
