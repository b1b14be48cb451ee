"""Experiment tables: definitions as data, the runner (keeps finished runs, resumes unfinished
ones), and the summary (means, improvements, the paired t-test star)."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import threading
import types
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console
from scipy.stats import t as student_t

from crossan.zoo.cli.experiments import build_parser, training_overrides
from crossan.zoo.core.errors import ConfigError
from crossan.zoo.core.file_lock import file_lock
from crossan.zoo.data import load_dataset
from crossan.zoo.experiments import builtin_tables, load_table, runner
from crossan.zoo.experiments.definition import RunSpec, TableDefinition
from crossan.zoo.experiments.report import summarise, write_report
from crossan.zoo.experiments.runner import TableRuns, train_missing
from crossan.zoo.features.settings import FeatureSettings
from crossan.zoo.runs.pipeline import describe_data
from crossan.zoo.training.checkpoint import read_json, write_json

MINI = """
title = "mini"
baseline = "wide"
train = { epochs = 1, batch_size = 64 }
sweep = { parameter = "adapter_dim", log_scale = true }

[[runs]]
name = "Narrow (r=8)"
preset = "crossan-t"
set = { adapter_dim = 8 }
value = 8

[[runs]]
name = "wide"
preset = "crossan-t"
set = { adapter_dim = 16 }
value = 16
"""


def test_builtin_tables_load_with_their_comparisons() -> None:
    assert builtin_tables() == ["adapter-dim", "cross", "fusion", "lr", "modalities", "topk", "uncached"]
    uncached = load_table("uncached")
    assert {r.preset: uncached.comparison(r) for r in uncached.runs if r.preset != "crossan-ti"} == {
        preset: "CROSSAN (T+I)" for preset in ("fft-ti", "adapter-ti", "lora-ti", "iisan-ti")
    }
    modalities = load_table("modalities")
    crossan = {r.name: modalities.comparison(r) for r in modalities.runs if r.name.startswith("CROSSAN")}
    assert crossan == {
        "CROSSAN (T+I)": "IISAN (T+I)",
        "CROSSAN (T+I+A)": "IISAN-E (T+I+A)",
        "CROSSAN (T+I+V)": "IISAN-E (T+I+V)",
        "CROSSAN (T+I+V+A)": "IISAN-E (T+I+V+A)",
    }
    assert [r.options["top_k"] for r in load_table("topk").runs] == [4, 3, 2, 1]
    sweep = load_table("adapter-dim")
    assert sweep.sweep.parameter == "adapter_dim" and [r.value for r in sweep.runs][0] == 32


@pytest.mark.parametrize(
    "text, message",
    [
        ('[[runs]]\nname = "a"\npreset = "nope"\n', "unknown preset 'nope'"),
        ('baseline = "b"\n[[runs]]\nname = "a"\npreset = "crossan-t"\n', "baseline 'b' is not one of the runs"),
        ('[[runs]]\nname = "a"\npreset = "crossan-t"\nset = { adapter_dims = 3 }\n', "adapter_dims"),
        ('[[runs]]\nname = "a"\npreset = "crossan-t"\nset = { seed = 3 }\n', "seeds come from --seeds"),
        ('colour = 1\n[[runs]]\nname = "a"\npreset = "crossan-t"\n', "unknown keys colour"),
        ("title = \n", "not valid TOML"),
    ],
)
def test_bad_definitions_are_one_line_errors(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_table(str(path))


@pytest.mark.parametrize(
    "given, expected",
    [
        (
            ["--epochs", "3", "--train", "steps_per_epoch=16", "--train", "lr=5e-4"],
            {"epochs": 3, "steps_per_epoch": 16, "lr": 5e-4},
        ),
        (["--train", "adapter_dim=8"], "adapter_dim are model fields"),
        (["--train", "seed=3"], "seeds come from --seeds"),
        (["--train", "steps_per_epoch=-2"], "steps_per_epoch must be"),
        (["--train", "steps_per_epoch"], "--train expects KEY=VALUE"),
    ],
)
def test_command_line_training_overrides(given: list[str], expected: dict | str) -> None:
    args = build_parser().parse_args(["uncached", *given])
    if isinstance(expected, dict):
        assert training_overrides(args) == expected
    else:
        with pytest.raises(ConfigError, match=expected):
            training_overrides(args)


def test_star_and_improvement_match_a_hand_computed_paired_t_test() -> None:
    definition = TableDefinition("t", "t", (RunSpec("new", "crossan-t"), RunSpec("old", "crossan-t")), "old")
    # Ten users, one seed: HR@10 is 1 for ranks <= 10. "new" hits users 0-6, "old" users 0-2 and 7.
    new = [1, 2, 3, 4, 5, 6, 7, 50, None, 40]
    old = [1, 2, 3, 30, 30, 30, 30, 9, None, 40]

    def hr10(ranks: list[int | None]) -> list[float]:
        return [0.0 if r is None or r > 10 else 1.0 for r in ranks]

    metrics = {
        name: [
            {"best_epoch": 1, "test": {"HR@10": float(np.mean(hr10(r))), "HR@20": 0.5, "NDCG@10": 0.5, "NDCG@20": 0.5}}
        ]
        for name, r in (("new", new), ("old", old))
    }
    summary = summarise(definition, metrics, {"new": [new], "old": [old]})
    row = summary["rows"][0]
    differences = np.array(hr10(new)) - np.array(hr10(old))  # +1 x 4, -1 x 1, 0 x 5
    t = differences.mean() / (differences.std(ddof=1) / math.sqrt(len(differences)))
    p = 2 * student_t.sf(abs(t), df=len(differences) - 1)
    # t = 0.3 / (sqrt(4.1 / 9) / sqrt(10)) = 1.405 with 9 degrees of freedom (per-user values are float32)
    assert row["p_value"]["HR@10"] == pytest.approx(p, rel=1e-5) and p == pytest.approx(0.1934, abs=1e-4)
    assert row["significant"]["HR@10"] is False
    assert row["improvement_percent"]["HR@10"] == pytest.approx(100 * (0.7 - 0.4) / 0.4)
    assert "compared_with" not in summary["rows"][1]

    many_new, many_old = new * 4, old * 4  # the same differences over 40 users: significant
    summary = summarise(definition, metrics, {"new": [many_new], "old": [many_old]})
    assert summary["rows"][0]["p_value"]["HR@10"] < 0.05 and summary["rows"][0]["significant"]["HR@10"]


def test_a_run_another_process_holds_is_passed_over_then_waited_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "mini.toml"
    path.write_text(MINI)
    table = TableRuns(load_table(str(path)), tmp_path / "out", (1, 2))
    held = table.directory(table.definition.runs[0], 1)
    finished: list[str] = []
    others_done, holding = threading.Event(), threading.Event()

    def finish(table: TableRuns, run: RunSpec, seed: int, *rest: object) -> dict[str, str]:
        finished.append(table.directory(run, seed).name)
        if len(finished) == 3:
            others_done.set()
        return {finished[-1]: "trained"}

    def other_process() -> None:
        with file_lock(runner._claim_path(held)):
            holding.set()
            others_done.wait(timeout=30)

    monkeypatch.setattr(runner, "_finish_run", finish)
    holder = threading.Thread(target=other_process)
    holder.start()
    assert holding.wait(timeout=30)
    done = train_missing(table, None, {}, FeatureSettings(), {}, "cpu", Console(quiet=True))
    holder.join()
    assert finished == ["narrow-r=8-seed2", "wide-seed1", "wide-seed2", "narrow-r=8-seed1"]
    assert set(done) == set(finished)


def test_a_finished_run_keeps_the_value_it_chose_for_a_setting_given_as_auto(tmp_path: Path) -> None:
    """The run records the chosen value (2.0) where the table says `auto`; the table keeps it,
    and still refuses a run whose recorded value was not chosen on validation."""
    path = tmp_path / "auto.toml"
    path.write_text(
        'title = "auto"\ntrain = { epochs = 1 }\n\n[[runs]]\nname = "prior"\npreset = "crossan-t"\n'
        "set = { score_temperature = 0.1, backbone_prior_weight = 0.5, "
        'backbone_prior_inference_weight = "auto" }\n'
    )
    table = TableRuns(load_table(str(path)), tmp_path / "out", (1,))
    run_dir = table.directory(table.definition.runs[0], 1)
    config = {
        "preset": "crossan-t",
        "data": {"fingerprint": "data"},
        "train": {"epochs": 1, "seed": 1},
        "model": {"score_temperature": 0.1, "backbone_prior_weight": 0.5, "backbone_prior_inference_weight": 2.0},
    }
    write_json(run_dir / "config.json", config)
    write_json(run_dir / "trainer_state.json", {"finished": True})
    choice = {"backbone_prior_inference_weight": {"chosen": 2.0, "metric": "NDCG@10", "valid": []}}
    write_json(run_dir / "metrics.json", {"chosen_on_validation": choice})
    arguments = (
        types.SimpleNamespace(fingerprint=lambda: "data"),
        {},
        FeatureSettings(),
        {},
        "cpu",
        Console(quiet=True),
    )
    assert train_missing(table, *arguments) == {"prior-seed1": "kept"}
    write_json(run_dir / "metrics.json", {})
    with pytest.raises(ConfigError, match="backbone_prior_inference_weight differ"):
        train_missing(table, *arguments)


def test_a_claim_is_free_again_once_its_holder_is_killed(tmp_path: Path) -> None:
    claim = tmp_path / ".run-seed1.lock"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom crossan.zoo.core.file_lock import file_lock\n"
            f"with file_lock({str(claim)!r}):\n    print('held', flush=True)\n    time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with file_lock(claim, blocking=False) as claimed:
            assert not claimed
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with file_lock(claim, blocking=False) as claimed:
        assert claimed


@pytest.mark.slow
def test_runner_trains_missing_runs_keeps_finished_ones_and_resumes_unfinished(
    toy_root: Path, cache_dir: Path, tmp_path: Path
) -> None:
    path = tmp_path / "mini.toml"
    path.write_text(MINI)
    table = TableRuns(load_table(str(path)), tmp_path / "out", (1, 2))
    dataset = load_dataset("toy", toy_root, cache_dir)
    arguments = (
        dataset,
        describe_data("toy", dataset),
        FeatureSettings(cache_dir=cache_dir),
        {},
        "cpu",
        Console(quiet=True),
    )
    assert set(train_missing(table, *arguments).values()) == {"trained"}
    run_folders = sorted(p.name for p in table.folder.iterdir() if not p.name.startswith("."))  # not the claims
    assert run_folders == ["narrow-r=8-seed1", "narrow-r=8-seed2", "wide-seed1", "wide-seed2"]
    first = write_report(table)
    stamps = {p: p.stat().st_mtime_ns for p in table.folder.rglob("*") if p.is_file() and p.suffix != ".png"}

    assert set(train_missing(table, *arguments).values()) == {"kept"}
    unfinished = table.folder / "wide-seed2"
    state = read_json(unfinished / "trainer_state.json")
    write_json(unfinished / "trainer_state.json", {**state, "finished": False})
    (unfinished / "metrics.json").unlink()
    assert train_missing(table, *arguments) == {
        "narrow-r=8-seed1": "kept",
        "narrow-r=8-seed2": "kept",
        "wide-seed1": "kept",
        "wide-seed2": "resumed",
    }
    assert all(p.stat().st_mtime_ns == stamp for p, stamp in stamps.items() if "wide-seed2" not in str(p))
    again = write_report(table)
    assert again["rows"] == first["rows"]

    assert json.loads((table.folder / "mini.json").read_text())["rows"][0]["compared_with"] == "wide"
    markdown = (table.folder / "mini.md").read_text()
    assert "| Narrow (r=8) |" in markdown and "| Narrow (r=8) vs wide |" in markdown
    assert (table.folder / "mini.png").read_bytes().startswith(b"\x89PNG")

    changed = TableRuns(load_table(str(path)), tmp_path / "out", (1,))
    with pytest.raises(ConfigError, match="model.adapter_dim differ from the table"):
        train_missing(
            changed,
            dataset,
            describe_data("toy", dataset),
            FeatureSettings(cache_dir=cache_dir),
            {"adapter_dim": 4},
            "cpu",
            Console(quiet=True),
        )
