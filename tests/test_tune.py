"""The tuner: shipped search spaces, one-line errors in spaces and recipes, recipes that train.py
takes, and a study killed with SIGKILL that resumes without retraining finished trials."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from killing import PROJECT, kill_when
from scripts import run_script

from crossan.zoo.core.errors import ConfigError
from crossan.zoo.features.settings import FeatureSettings
from crossan.zoo.models import list_models, preset_config
from crossan.zoo.models.config import StoredFeatures
from crossan.zoo.tune.recipe import read_recipe, write_recipe
from crossan.zoo.tune.report import write_outputs
from crossan.zoo.tune.space import default_space, load_space
from crossan.zoo.tune.study import FINISHED, StudySettings, distinct_runs, open_study, run_study, study_data

TUNED_PRESETS = [name for name in list_models() if preset_config(name).stored_features is StoredFeatures.STATES]


@pytest.mark.parametrize("preset", TUNED_PRESETS)
def test_the_shipped_space_of_every_cached_preset_loads(preset: str) -> None:
    space = load_space(default_space(preset), preset)
    assert space.parameters and "lr" in {p.name for p in space.parameters}


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('[params.lrr]\ntype = "float"\nlow = 0.1\nhigh = 1.0\n', "unknown config field(s) lrr"),
        ('[params.lr]\ntype = "float"\nlow = "fast"\nhigh = 1.0\n', "params.lr: low needs a number, got 'fast'"),
        ('[params.lr]\ntype = "normal"\n', "params.lr needs type = one of float, int, categorical"),
        ('[params.epochs]\ntype = "categorical"\nchoices = ["abc"]\n', "epochs needs an integer, got 'abc' (str)"),
        ('[params.lr]\ntype = "float"\nlow = 0.0\nhigh = 1.0\nlog = true\n', "low > 0 on a log scale"),
        ("[fixed]\nepochs = 2\n", "no [params.NAME] table"),
    ],
)
def test_a_bad_space_is_one_line_naming_the_file_and_field(tmp_path: Path, table: str, message: str) -> None:
    path = tmp_path / "space.toml"
    path.write_text(table)
    with pytest.raises(ConfigError, match=None) as raised:
        load_space(path, "sasrec-id")
    assert message in str(raised.value) and str(path) in str(raised.value) and "\n" not in str(raised.value)


def test_a_recipe_round_trips_and_a_bad_one_is_one_line(tmp_path: Path) -> None:
    path = write_recipe(tmp_path / "recipe.json", "sasrec-id", {"lr": 0.002, "dropout": 0.2, "epochs": 3}, {})
    assert read_recipe(path) == ("sasrec-id", {"lr": 0.002, "dropout": 0.2, "epochs": 3})
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"preset": "sasrec-id", "set": {"lr": "fast"}}))
    result = run_script("train", "--recipe", str(bad))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"error: {bad}: lr needs a number, got 'fast' (str)"]


def finished_run_files(study: Path) -> dict[str, float]:
    """Trial run folders that finished, with the time their metrics.json was written."""
    return {path.parent.name: path.stat().st_mtime for path in (study / "trials").glob("*/metrics.json")}


@pytest.mark.slow
def test_a_killed_study_keeps_finished_trials_resumes_the_killed_one_and_stops_at_the_budget(
    toy_root: Path, cache_dir: Path, tmp_path: Path
) -> None:
    study = tmp_path / "study"
    command = [
        sys.executable,
        "-m",
        "crossan",
        "tune",
        "--preset",
        "sasrec-id",
        "--data",
        "toy",
        "--data-root",
        str(toy_root),
        "--cache-dir",
        str(cache_dir),
        "--study",
        str(study),
        "--trials",
        "3",
        "--heartbeat",
        "1",
        "--set",
        "epochs=3",
        "--set",
        "patience=3",
        "--pruner",
        "median",
    ]

    def second_trial_checkpointed(lines: list[str]) -> bool:
        folders = list((study / "trials").glob("*/trainer_state.json"))
        return len(finished_run_files(study)) == 1 and len(folders) == 2

    kill_when(command, second_trial_checkpointed)
    before = finished_run_files(study)
    (killed,) = {path.parent.name for path in (study / "trials").glob("*/trainer_state.json")} - set(before)
    killed_dir = study / "trials" / killed
    started = (killed_dir / "config.json").stat().st_mtime
    epochs_at_kill = len(json.loads((killed_dir / "trainer_state.json").read_text())["history"])
    time.sleep(3)  # past the grace period (twice the heartbeat): the killed trial counts as failed
    result = subprocess.run([*command, "--json"], cwd=PROJECT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    assert summary["finished_trials"] == summary["trained_trials"] == 3, result.stderr[-3000:]
    after = finished_run_files(study)
    assert {name: after[name] for name in before} == before, "a finished trial was trained again"
    # The killed trial went on from its checkpoint (to its end, or until the pruner stopped it),
    # and was not started over: a new run writes its config.json first.
    epochs_now = len(json.loads((killed_dir / "trainer_state.json").read_text())["history"])
    assert epochs_now > epochs_at_kill and (killed_dir / "config.json").stat().st_mtime == started
    assert len(list((study / "trials").iterdir())) == 3
    with sqlite3.connect(study / "study.db") as db:
        states = [state for (state,) in db.execute("select state from trials order by number")]
    assert states.count("FAIL") == 1 and states.count("COMPLETE") + states.count("PRUNED") == 3
    recipe = json.loads((study / "best-recipe.json").read_text())
    assert recipe["preset"] == "sasrec-id" and recipe["set"]["epochs"] == 3
    assert (study / "trials.png").read_bytes().startswith(b"\x89PNG") and (study / "report.md").is_file()


def two_point_space(tmp_path: Path) -> Path:
    path = tmp_path / "space.toml"
    path.write_text(
        '[fixed]\nepochs = 1\npatience = 1\n\n[params.lr]\ntype = "categorical"\n'
        "choices = [0.001, 0.002, 0.004, 0.008]\n"
    )
    return path


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_a_reopened_study_proposes_new_values_instead_of_replaying_its_first_ones(tmp_path: Path) -> None:
    settings = StudySettings("sasrec-id", load_space(two_point_space(tmp_path), "sasrec-id"), 8, tmp_path / "study")
    proposals = []
    for _ in range(4):  # each process opens the study with the trials stored so far
        study = open_study(settings, {"fingerprint": "f"}, FeatureSettings())
        trial = study.ask()
        proposals.append(settings.space.sample(trial)["lr"])
        study.tell(trial, 0.1)
    assert len(set(proposals)) > 1, f"every reopening replayed the first draw: {proposals}"


def test_a_repeated_proposal_takes_the_finished_trials_result_without_training(toy_root: Path, tmp_path: Path) -> None:
    from rich.console import Console

    from crossan.zoo.data import load_dataset
    from crossan.zoo.features.settings import FeatureSettings
    from crossan.zoo.runs.pipeline import describe_data

    dataset = load_dataset("toy", toy_root, None)
    space = load_space(two_point_space(tmp_path), "sasrec-id")
    settings = StudySettings("sasrec-id", space, 1, tmp_path / "study")
    arguments = (dataset, describe_data("toy", dataset), FeatureSettings(), torch.device("cpu"), Console(quiet=True))
    first = run_study(settings, *arguments).trials[0]
    metrics = tmp_path / "study" / "trials" / Path(first.user_attrs["run_dir"]).name / "metrics.json"
    written = metrics.stat().st_mtime
    study = open_study(settings, study_data(dataset, describe_data("toy", dataset)), FeatureSettings())
    study.enqueue_trial(first.params)  # what a second worker or a resumed sampler may propose
    study = run_study(dataclasses.replace(settings, trials=2), *arguments)
    (_, repeat) = study.trials
    assert repeat.state.name == "COMPLETE" and repeat.value == first.value and repeat.user_attrs["repeats"] == 0
    assert metrics.stat().st_mtime == written and len(list((tmp_path / "study" / "trials").iterdir())) == 1
    assert distinct_runs(study) == 1
    assert write_outputs(study, dataclasses.replace(settings, trials=2))["trained_trials"] == 1


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_a_trial_in_flight_elsewhere_holds_a_slot_of_the_budget(
    toy_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rich.console import Console

    from crossan.zoo.data import load_dataset
    from crossan.zoo.features.settings import FeatureSettings
    from crossan.zoo.runs.pipeline import describe_data
    from crossan.zoo.tune import study as study_module

    monkeypatch.setattr(study_module, "WAIT_SECONDS", 0.2)
    dataset = load_dataset("toy", toy_root, None)
    settings = StudySettings("sasrec-id", load_space(two_point_space(tmp_path), "sasrec-id"), 2, tmp_path / "study")
    elsewhere_study = open_study(settings, study_data(dataset, describe_data("toy", dataset)), FeatureSettings())
    elsewhere = elsewhere_study.ask()  # another worker's trial, training while this one starts

    def other_worker_finishes() -> None:
        deadline = time.monotonic() + 120
        while not elsewhere_study.get_trials(states=FINISHED) and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1)  # the worker below now waits for this trial instead of starting a third
        elsewhere_study.tell(elsewhere, 0.5)

    finisher = threading.Thread(target=other_worker_finishes)
    finisher.start()
    arguments = (dataset, describe_data("toy", dataset), FeatureSettings(), torch.device("cpu"), Console(quiet=True))
    study = run_study(settings, *arguments)
    finisher.join()
    states = [trial.state.name for trial in study.trials]
    assert states == ["COMPLETE", "COMPLETE"] and study.best_value == 0.5
    assert len(list((tmp_path / "study" / "trials").iterdir())) == 1


def test_the_trials_plot_names_preset_and_data_set_once_and_keeps_its_legend_off_the_points() -> None:
    import optuna
    from optuna.trial import TrialState, create_trial

    from crossan.zoo.tune import report

    study = optuna.create_study(direction="maximize")
    for value in (0.1, 0.3, 0.2):
        study.add_trial(create_trial(value=value, intermediate_values={1: value}))
    study.add_trial(create_trial(state=TrialState.PRUNED, intermediate_values={1: 0.05}))
    title = report._plot_title("sasrec-id", {"kind": "toy", "name": "toy"})
    assert title == "sasrec-id on toy data set 'toy'"
    figure = report._trials_figure(study.get_trials(), title)
    figure.canvas.draw()
    (axes,), (legend,) = figure.axes, figure.legends
    assert axes.get_title() == title
    assert [text.get_text() for text in legend.get_texts()] == [
        "complete",
        "best so far",
        "pruned (last epoch reported)",
    ]
    assert legend.get_window_extent().x0 >= axes.get_window_extent().x1  # right of the axes, over no point
