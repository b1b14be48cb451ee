"""MicroLens layout in both pair formats, pretrained backbones from local directories, MiniLM."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from crossan.zoo.backbones import BackboneSpec, StateExtractor, load_backbone
from crossan.zoo.backbones.tiny import save_tiny_backbone
from crossan.zoo.data import DataError, read_microlens

PROJECT = Path(__file__).resolve().parents[1]


def microlens_fixture(toy_root: Path, root: Path, pairs_format: str) -> Path:
    """The toy set rewritten as a MicroLens-100K-style folder (`<name>_titles.csv`, pairs as asked)."""
    root.mkdir(parents=True)
    shutil.copy(toy_root / "toy_title_en.csv", root / "mlfix_titles.csv")
    for folder in ("covers", "videos"):
        (root / folder).symlink_to(toy_root / folder)
    lines = (toy_root / "toy_pairs.tsv").read_text().splitlines()
    if pairs_format == "tsv":
        (root / "mlfix_pairs.tsv").write_text("\n".join(lines) + "\n")
        return root
    rows = []
    clock = 1_600_000_000
    for line in lines:
        user, items = line.split("\t")
        for item in items.split():
            clock += random.Random(clock).randint(1, 50)
            rows.append((clock, user, item))
    rows.sort()  # the published CSV is sorted by time, users interleaved
    (root / "mlfix_pairs.csv").write_text("user,item,timestamp\n" + "".join(f"{u},{i},{t}\n" for t, u, i in rows))
    return root


@pytest.fixture(scope="module")
def fixtures(toy_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("microlens")
    return {fmt: microlens_fixture(toy_root, base / fmt, fmt) for fmt in ("tsv", "csv")}


def test_both_pair_formats_read_the_same_sequences(fixtures: dict[str, Path]) -> None:
    tsv, csv = read_microlens(fixtures["tsv"]), read_microlens(fixtures["csv"])
    assert tsv.name == csv.name == "mlfix"
    assert tsv.user_ids == csv.user_ids
    assert (tsv.items == csv.items).all() and (tsv.offsets == csv.offsets).all()
    assert tsv.fingerprint() == csv.fingerprint()


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("u0001,i0001", ":3: expected 'user,item,timestamp', got 2 field(s)"),
        ("u0001,zz99,5", ":3: unknown item id 'zz99' (not in the item file)"),
        ("u0001,i0001,yesterday", ":3: timestamp 'yesterday' is not a number"),
    ],
)
def test_bad_csv_rows_name_file_and_line(fixtures: dict[str, Path], tmp_path: Path, row: str, message: str) -> None:
    root = tmp_path / "bad"
    shutil.copytree(fixtures["csv"], root, symlinks=True)
    pairs = root / "mlfix_pairs.csv"
    lines = pairs.read_text().splitlines()
    lines[2] = row
    pairs.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as info:
        read_microlens(root)
    assert str(info.value) == f"{pairs}{message}"


def test_configurable_media_folders(fixtures: dict[str, Path], tmp_path: Path) -> None:
    root = tmp_path / "renamed"
    shutil.copytree(fixtures["tsv"], root, symlinks=True)
    (root / "covers").rename(root / "cover_images")
    assert "image" not in read_microlens(root).modalities
    dataset = read_microlens(root, cover_dir="cover_images")
    assert dataset.modalities == ("text", "image", "video", "audio")
    assert dataset.cover_paths[0] == root / "cover_images" / f"{dataset.item_ids[0]}.jpg"


def test_minilm_gives_real_sentence_embeddings() -> None:
    spec = BackboneSpec.resolve("text", "tiny", override="minilm")
    assert spec.pooling == "mean" and spec.source == "pretrained"
    extractor = StateExtractor(load_backbone(spec), side_layers=6)
    assert extractor.indices == [0, 1, 2, 3, 4, 5, 6] and extractor.backbone.width == 384
    states = extractor.encode(
        ["wireless bluetooth headphones", "noise cancelling earbuds", "organic chemistry laboratory textbook"]
    )[:, -1]
    cosine = torch.nn.functional.cosine_similarity
    assert cosine(states[0], states[1], dim=0) > cosine(states[0], states[2], dim=0) + 0.1


def test_pretrained_source_never_falls_back_when_offline(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    result = subprocess.run(
        [
            sys.executable,
            "train.py",
            "--preset",
            "crossan-t",
            "--data",
            "amazon",
            "--data-root",
            str(PROJECT.parent / "shared" / "data" / "amazon-scientific"),
            "--backbones",
            "pretrained",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--run-dir",
            str(tmp_path / "run"),
        ],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].startswith("error: cannot load the text backbone 'bert-base-uncased'")


@pytest.mark.slow
def test_local_pretrained_directories_train_end_to_end(fixtures: dict[str, Path], tmp_path: Path) -> None:
    """Different widths and depths per modality, loaded from `save_pretrained` folders."""
    shapes = {"text": (32, 6), "image": (48, 12), "video": (64, 8), "audio": (40, 6)}
    dirs = {m: save_tiny_backbone(m, tmp_path / "backbones" / m, width=w, layers=n) for m, (w, n) in shapes.items()}
    run_dir = tmp_path / "run"
    command = [
        sys.executable,
        "train.py",
        "--preset",
        "crossan-tiva",
        "--data",
        "microlens",
        "--data-root",
        str(fixtures["csv"]),
        "--backbones",
        "pretrained",
        "--epochs",
        "2",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--run-dir",
        str(run_dir),
        "--set",
        "side_width=32",
        "--set",
        "adapter_dim=16",
        "--text-max-tokens",
        "12",
        "--json",
    ]
    for modality, directory in dirs.items():
        command += ["--backbone", f"{modality}={directory}"]
    result = subprocess.run(command, cwd=PROJECT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads(result.stdout.strip().splitlines()[-1])
    assert 0 < metrics["test"]["HR@20"] <= 1 and metrics["best_epoch"] in (1, 2)
    config = json.loads((run_dir / "config.json").read_text())
    assert config["model"]["backbone_widths"] == [32, 48, 64, 40]
    backbones = config["features"]["backbones"]
    assert backbones["image"]["kept_indices"] == [0, 2, 4, 6, 8, 10, 12]
    assert backbones["video"]["kept_indices"] == [0, 1, 3, 4, 5, 7, 8]
    assert {b["source"] for b in backbones.values()} == {"pretrained"}
    assert backbones["text"]["preprocessing"]["max_tokens"] == 12
