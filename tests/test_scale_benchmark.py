"""benchmarks/scale.py: its synthetic data keep the planted rule, its fit recovers known growth
exponents, and (slow) a small grid runs every stage through the real code path."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from crossan.zoo.data import read_amazon
from crossan.zoo.features.states import open_states

PROJECT = Path(__file__).resolve().parents[1]


def load_scale():
    spec = importlib.util.spec_from_file_location("scale_benchmark", PROJECT / "benchmarks" / "scale.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_synthetic_data_keep_the_planted_rule_and_read_back(tmp_path: Path) -> None:
    scale = load_scale()
    point = scale.Point(3000, 800, 6, 16, tmp_path)
    scale.write_data(point)
    dataset = read_amazon(point.root)
    assert (dataset.num_users, dataset.num_items, dataset.num_interactions) == (3000, 800, 18_000)
    items = dataset.items.reshape(3000, 6).astype(np.int64) - 1
    same_cluster = (items[:, 1:] // scale.CLUSTER == items[:, :-1] // scale.CLUSTER).mean()
    expected = scale.STAY + (1 - scale.STAY) * scale.CLUSTER / 800
    assert abs(same_cluster - expected) < 0.01
    states = open_states(point.cache)
    assert states is not None and states.shape == (800, scale.NUM_STATES, 16) and states.dtype == torch.float16
    unit = torch.nn.functional.normalize(states[:, -1].float(), dim=-1)
    cosine = unit @ unit.t()
    cluster = torch.arange(800) // scale.CLUSTER
    same = cluster[:, None] == cluster[None, :]
    assert cosine[same & ~torch.eye(800, dtype=torch.bool)].mean() > 0.7 and abs(cosine[~same].mean()) < 0.05
    stamp = (point.root / "users.tsv").stat().st_mtime_ns
    scale.write_data(point)  # a finished point is reused, not rewritten
    assert (point.root / "users.tsv").stat().st_mtime_ns == stamp


def test_growth_exponents_recover_the_exponents_of_known_costs() -> None:
    scale = load_scale()
    results = []
    for users in (10**4, 10**5, 10**6):
        for items in (10**4, 10**5, 10**6):
            interactions = users * 10
            result = scale.StageResult(
                "epoch sasrec-id", users, items, interactions, seconds=2e-6 * interactions**1.1 * items**0.3
            )
            result.driving_size = float(interactions)
            results.append(result)
    results.append(scale.StageResult("read", 10, 10, 100, status="over the 5 s limit"))
    fitted = scale.growth_exponents(results)
    assert fitted["epoch sasrec-id"]["driving"] == pytest.approx(1.1, abs=1e-9)
    assert fitted["epoch sasrec-id"]["items"] == pytest.approx(0.3, abs=1e-9)
    assert "read" not in fitted  # a stage with no finished point is not fitted


@pytest.mark.slow
def test_a_small_grid_runs_every_stage_and_reports_it(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "benchmarks/scale.py",
            "--users",
            "1500",
            "3000",
            "--items",
            "400",
            "--state-width",
            "16",
            "--epoch-steps",
            "20",
            "--work",
            str(tmp_path),
            "--json",
        ],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    report = json.loads(done.stdout)
    by_stage = {(r["stage"], r["users"]): r for r in report["results"]}
    assert {stage for stage, _ in by_stage} == set(load_scale().STAGES)
    assert all(r["status"] == "ok" and r["seconds"] > 0 and r["peak_bytes"] > 0 for r in report["results"])
    epoch = by_stage[("epoch crossan-t", 3000)]
    assert epoch["facts"]["steps"] == "20 of 47"
    assert set(report["exponents"]) == set(load_scale().STAGES)
    # One epoch over the planted rule already ranks the next item far above chance (10 / 400).
    ndcg = float(by_stage[("validation crossan-t", 3000)]["facts"]["NDCG@10"].split()[0])
    assert ndcg > 0.1


def test_a_stage_past_its_limit_is_reported_with_the_limit_and_left_out_of_the_fit(tmp_path: Path) -> None:
    scale = load_scale()
    point = scale.Point(200, 64, 4, 8, tmp_path)
    scale.write_data(point)
    result = scale.measure("epoch crossan-t", point, 0, 0, limit=0.2)  # importing torch alone takes longer
    assert result.status == "over the 0.2 s limit" and result.seconds is None
    assert scale.growth_exponents([result]) == {}
