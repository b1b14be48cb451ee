"""crossan.export.ann_index and OnnxRecommender(index="faiss"): FAISS top-k agrees with exact scoring, never
returns history items, still returns k items when the history crowds the top, and its saved index
is reused until the table or the build parameters change.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import faiss
import numpy as np
import pytest
import torch

from crossan.export.ann_index import (
    INDEX_FILE,
    SIDECAR_FILE,
    HnswParameters,
    IvfParameters,
    IvfPqParameters,
    ann_top_k_rows,
    build_index,
    open_index,
    table_fingerprint,
)
from crossan.export.item_table import TABLE_FILE, save_item_table
from crossan.export.onnx_export import export_onnx
from crossan.export.ranking import top_k_rows
from crossan.export.serve import OnnxRecommender
from crossan.export.spec import user_encoder_spec
from crossan.export.wrappers import UserEncoder
from crossan.zoo.models import build_model, preset_config

REPO = Path(__file__).resolve().parents[1]
ROWS, DIM, K = 3000, 16, 10
GENEROUS = {
    "hnsw": HnswParameters(ef_search=200),
    "ivf": IvfParameters(nlist=32, nprobe=12),
    "ivfpq": IvfPqParameters(nlist=32, m=8, nprobe=12),
}


def random_table(rows: int = ROWS, seed: int = 0) -> np.ndarray:
    """Clustered rows with varying norms, so inner-product ranking is not trivial."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((30, DIM))
    table = centres[rng.integers(0, 30, rows)] + 0.7 * rng.standard_normal((rows, DIM))
    return (table * rng.lognormal(0.0, 0.2, (rows, 1))).astype(np.float32)


def queries(count: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((count, DIM)).astype(np.float32) * 2


def no_history(count: int) -> list[np.ndarray]:
    return [np.empty(0, dtype=np.int64)] * count


def recall(found: list[np.ndarray], truth: list[np.ndarray]) -> float:
    return float(np.mean([len(np.intersect1d(f, t)) / len(t) for f, t in zip(found, truth, strict=True)]))


@pytest.fixture(scope="module")
def table() -> np.ndarray:
    return random_table()


@pytest.mark.parametrize("kind", ["hnsw", "ivf", "ivfpq"])
def test_index_top_k_matches_exact(table: np.ndarray, kind: str) -> None:
    users = queries(300)
    index = build_index(table, GENEROUS[kind])
    found = ann_top_k_rows(index, users, table, no_history(len(users)), K)
    exact = top_k_rows(users, table, no_history(len(users)), K)
    assert all(len(rows) == K for rows in found)
    assert recall(found, exact) >= 0.95
    assert np.mean([np.array_equal(f, e) for f, e in zip(found, exact, strict=True)]) >= 0.8  # same order, too


def test_quantised_codes_take_a_fraction_of_the_flat_index(table: np.ndarray) -> None:
    """IVF-PQ stores m bytes per item where IVF-flat stores 4 * D: without the exact reordering of
    its candidates, its recall would be that of its approximate scores alone."""
    flat = faiss.serialize_index(build_index(table, GENEROUS["ivf"])).nbytes
    quantised_index = build_index(table, GENEROUS["ivfpq"])
    assert faiss.serialize_index(quantised_index).nbytes < flat / 3
    users = queries(300)
    exact = top_k_rows(users, table, no_history(len(users)), K)
    _, codes_only = quantised_index.search(users, K)
    reranked = ann_top_k_rows(quantised_index, users, table, no_history(len(users)), K)
    assert recall(reranked, exact) > recall(list(codes_only), exact)
    with pytest.raises(ValueError, match="must divide"):
        build_index(table, IvfPqParameters(m=5))


def test_history_is_excluded_and_k_items_still_come_back(table: np.ndarray) -> None:
    """Histories holding each user's 40 best items: the index must look past all of them."""
    users = queries(100, seed=2)
    best = top_k_rows(users, table, no_history(len(users)), 40)
    rng = np.random.default_rng(3)
    histories = [np.concatenate([rows, rng.integers(0, ROWS, 20)]) + 1 for rows in best]  # 1-based indices
    index = build_index(table, GENEROUS["hnsw"])
    found = ann_top_k_rows(index, users, table, histories, K)
    exact = top_k_rows(users, table, histories, K)
    assert all(
        len(rows) == K and not np.isin(rows, history - 1).any() for rows, history in zip(found, histories, strict=True)
    )
    assert recall(found, exact) >= 0.95


def test_short_results_are_searched_again_until_k_or_the_catalogue_is_left() -> None:
    """IVF probing one list of eight returns too few candidates (-1 labels): the search widens,
    and users whose history covers nearly the whole catalogue get exactly what is left."""
    table = random_table(400, seed=4)
    index = build_index(table, IvfParameters(nlist=8, nprobe=1))
    users = queries(20, seed=5)
    histories = [np.arange(1, 396) if user % 2 else np.arange(1, 31) for user in range(20)]
    found = ann_top_k_rows(index, users, table, histories, K)
    for rows, history in zip(found, histories, strict=True):
        assert len(rows) == min(K, 400 - len(history)) and not np.isin(rows, history - 1).any()
    exact = top_k_rows(users, table, histories, K)
    assert [sorted(rows) for rows in found[1::2]] == [sorted(rows) for rows in exact[1::2]]


def test_index_is_saved_reused_and_rebuilt(tmp_path: Path) -> None:
    table_path = save_item_table(tmp_path / TABLE_FILE, random_table(), [f"i{n}" for n in range(ROWS)], "test")
    table = random_table()
    open_index(table_path, table, HnswParameters())
    index_path, sidecar_path = tmp_path / INDEX_FILE, tmp_path / SIDECAR_FILE
    sidecar = json.loads(sidecar_path.read_text())
    assert sidecar == {
        "table_sha256": table_fingerprint(table_path),
        "table_shape": [ROWS, DIM],
        "parameters": {"kind": "hnsw", "m": 32, "ef_construction": 64},
    }
    assert not list(tmp_path.glob(".*.tmp"))

    def built_again(parameters: HnswParameters | IvfParameters, table: np.ndarray = table) -> bool:
        os.utime(index_path, ns=(0, 0))  # an mtime no rebuild can leave behind
        index = open_index(table_path, table, parameters)
        return index_path.stat().st_mtime_ns != 0 and index.ntotal == len(table)

    assert not built_again(HnswParameters())
    index = open_index(table_path, table, HnswParameters(ef_search=77))  # search-time only: reused
    assert index_path.stat().st_mtime_ns == 0 and index.hnsw.efSearch == 77
    assert built_again(HnswParameters(m=16))
    assert built_again(IvfParameters())
    assert json.loads(sidecar_path.read_text())["parameters"] == {"kind": "ivf", "nlist": 1024}

    changed = random_table(seed=9)
    save_item_table(table_path, changed, [f"i{n}" for n in range(ROWS)], "test")
    assert built_again(IvfParameters(), changed)
    assert not built_again(IvfParameters(), changed)
    index_path.write_bytes(b"not an index")
    assert built_again(IvfParameters(), changed)


def test_parameters_are_checked() -> None:
    with pytest.raises(ValueError, match="ef_search must be a positive integer"):
        HnswParameters(ef_search=0)
    with pytest.raises(ValueError, match="nprobe"):
        IvfParameters(nprobe=-1)


# --- OnnxRecommender over an export folder -----------------------------------------------------

CATALOGUE = 2000


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What OnnxRecommender reads, for sasrec-id (one block, random weights) over 2000 items: the
    user encoder exported to ONNX as `python -m crossan.export` does, and the item table."""
    config = preset_config("sasrec-id", num_blocks=1, ffn_dim=32).fit_to_data(CATALOGUE, {})
    torch.manual_seed(0)
    model = build_model(dataclasses.replace(config, dropout=0.0)).eval()
    spec = user_encoder_spec(model)
    padding_mask = torch.tensor([[True, True, False, False, False], [False] * 5])
    out = tmp_path_factory.mktemp("export")
    export_onnx(UserEncoder(model), spec, (torch.randn(2, 5, config.embedding_dim), padding_mask), out / spec.onnx_file)
    with torch.no_grad():
        table = model.catalogue_embeddings(lambda rows: (rows,), CATALOGUE).numpy()
    save_item_table(out / TABLE_FILE, table, [f"i{n:04d}" for n in range(CATALOGUE)], "test")
    return out


def test_faiss_recommender_agrees_with_exact(export_dir: Path) -> None:
    rng = np.random.default_rng(6)
    histories = [[f"i{n:04d}" for n in rng.choice(CATALOGUE, rng.integers(1, 30), replace=False)] for _ in range(200)]
    exact = OnnxRecommender(export_dir).recommend(histories, k=K)
    approximate = OnnxRecommender(export_dir, index="faiss").recommend(histories, k=K)
    assert (export_dir / INDEX_FILE).is_file()
    assert all(
        len(items) == K and not set(items) & set(history) for items, history in zip(approximate, histories, strict=True)
    )
    assert np.mean([a == e for a, e in zip(approximate, exact, strict=True)]) >= 0.95
    reloaded = OnnxRecommender(export_dir, index="faiss", index_parameters=HnswParameters(ef_search=400))
    assert reloaded.recommend(histories[:5], k=K) == exact[:5]


def test_recommender_rejects_unknown_index(export_dir: Path) -> None:
    with pytest.raises(ValueError, match="index must be one of 'exact', 'faiss', got 'annoy'"):
        OnnxRecommender(export_dir, index="annoy")  # type: ignore[arg-type]  # an unknown kind on purpose
    with pytest.raises(ValueError, match="index='faiss' only"):
        OnnxRecommender(export_dir, index_parameters=IvfParameters())


def test_retrieval_benchmark_prints_one_json_object() -> None:
    command = [sys.executable, "benchmarks/retrieval.py", "--items", "5000", "--queries", "200", "--json"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    setup = report.pop("setup")
    assert setup["items"] == 5000 and setup["queries"] == 200 and setup["dim"] == 64
    assert set(report) == {
        "exact",
        "hnsw ef_search=128",
        "hnsw ef_search=256",
        "hnsw ef_search=512",
        "ivf nprobe=8",
        "ivf nprobe=16",
        "ivfpq nprobe=8",
        "ivfpq nprobe=16",
    }
    assert report["ivfpq nprobe=16"]["index_bytes"] < report["ivf nprobe=16"]["index_bytes"] / 3
    for entry in report.values():
        assert set(entry) == {"recall@10", "queries_per_s", "build_s", "index_bytes", "parameters"}
        assert 0 <= entry["recall@10"] <= 1 and entry["queries_per_s"] > 0 and entry["index_bytes"] > 0
    assert report["exact"]["recall@10"] == 1
