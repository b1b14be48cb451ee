"""The tuner: shipped search spaces, one-line errors in spaces and recipes, recipes that train.py
takes, a study killed with SIGKILL that resumes without retraining finished trials, warm starts,
the Hyperband pruner, and the final pick on the whole validation split after a search that
validated on a sample of users."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import subprocess
import sys
import threading
import time
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
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


# Cheaper studies: warm starts, Hyperband, validation on a sample of users.


def tiny_space(tmp_path: Path) -> Path:
    """Two continuous parameters (no proposal repeats a given value by chance) of a tiny
    sasrec-id (one block of width 16, 4 batches an epoch on the toy set), 2 epochs."""
    path = tmp_path / "tiny.toml"
    path.write_text(
        "[fixed]\nepochs = 2\npatience = 2\nbatch_size = 256\nembedding_dim = 16\nffn_dim = 32\nnum_blocks = 1\n\n"
        '[params.lr]\ntype = "float"\nlow = 1e-4\nhigh = 1e-2\nlog = true\n\n'
        '[params.dropout]\ntype = "float"\nlow = 0.0\nhigh = 0.5\n'
    )
    return path


def toy_arguments(toy_root: Path) -> tuple:
    """`run_study`'s arguments after the settings, for the session's toy data set on the CPU."""
    from rich.console import Console

    from crossan.zoo.data import load_dataset
    from crossan.zoo.runs.pipeline import describe_data

    dataset = load_dataset("toy", toy_root, None)
    return dataset, describe_data("toy", dataset), FeatureSettings(), torch.device("cpu"), Console(quiet=True)


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_a_warm_start_is_the_first_trial_counts_towards_the_budget_and_is_not_enqueued_again(
    toy_root: Path, tmp_path: Path
) -> None:
    import optuna

    # A best recipe of another catalogue: its fixed values (epochs, batch size) are not the study's.
    recipe = write_recipe(
        tmp_path / "best-recipe.json",
        "sasrec-id",
        {"lr": 0.00321, "dropout": 0.125, "epochs": 30, "patience": 5, "batch_size": 64},
        {},
    )
    space = load_space(tiny_space(tmp_path), "sasrec-id")
    settings = StudySettings(
        "sasrec-id",
        space,
        1,
        tmp_path / "study",
        warm_start=(read_recipe(recipe)[1],),
        warm_start_files=(str(recipe),),
    )
    assert settings.warm_start_params == ({"lr": 0.00321, "dropout": 0.125},)
    arguments = toy_arguments(toy_root)
    (first,) = run_study(settings, *arguments).trials  # the warm start is the budget's one trial
    assert first.state.name == "COMPLETE" and first.params == {"lr": 0.00321, "dropout": 0.125}
    assert first.user_attrs["warm_start"] == str(recipe)
    trained = json.loads((Path(first.user_attrs["run_dir"]) / "config.json").read_text())["train"]
    assert (trained["lr"], trained["epochs"], trained["batch_size"]) == (0.00321, 2, 256)

    study = run_study(dataclasses.replace(settings, trials=2), *arguments)  # resumed: one trial more, sampled
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    assert study.trials[1].params != first.params and "warm_start" not in study.trials[1].user_attrs
    reopened = open_study(settings, study_data(*arguments[:2]), FeatureSettings())
    assert len(reopened.trials) == 2 and not reopened.get_trials(states=(optuna.trial.TrialState.WAITING,))


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_warm_starts_are_enqueued_in_order_once_with_only_the_sampled_parameters(tmp_path: Path) -> None:
    from optuna.trial import TrialState

    space = load_space(two_point_space(tmp_path), "sasrec-id")
    starts = ({"lr": 0.004, "epochs": 30}, {"lr": 0.001, "dropout": 0.3}, {"lr": 0.004})  # the third repeats
    settings = StudySettings("sasrec-id", space, 4, tmp_path / "study", warm_start=starts)
    study = open_study(settings, {"fingerprint": "f"}, FeatureSettings())
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert [t.system_attrs["fixed_params"] for t in waiting] == [{"lr": 0.004}, {"lr": 0.001}]
    assert [settings.trial_space.sample(study.ask())["lr"] for _ in waiting] == [0.004, 0.001]
    # Resumed, even with another warm start (not part of what the study is): nothing is enqueued.
    resumed = open_study(
        dataclasses.replace(settings, warm_start=({"lr": 0.008},)), {"fingerprint": "f"}, FeatureSettings()
    )
    assert [t.params["lr"] for t in resumed.trials] == [0.004, 0.001]


@pytest.mark.parametrize(
    ("space_text", "overrides", "max_resource"),
    [
        (None, (), 30),  # sasrec-id's shipped space fixes epochs = 30
        (None, (("epochs", 7),), 7),  # --set epochs=7
        ('[params.epochs]\ntype = "int"\nlow = 2\nhigh = 9\n', (), 9),  # tuned: its largest value
    ],
)
@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_a_hyperband_study_runs_from_one_epoch_to_the_trials_epochs(
    tmp_path: Path, space_text: str | None, overrides: tuple, max_resource: int
) -> None:
    import optuna

    from crossan.zoo.cli.tune import build_parser

    path = default_space("sasrec-id")
    if space_text is not None:
        path = tmp_path / "space.toml"
        path.write_text(space_text)
    settings = StudySettings(
        "sasrec-id", load_space(path, "sasrec-id"), 6, tmp_path / "study", pruner="hyperband", overrides=overrides
    )
    pruner = open_study(settings, {"fingerprint": "f"}, FeatureSettings()).pruner
    assert isinstance(pruner, optuna.pruners.HyperbandPruner)
    assert (pruner._min_resource, pruner._max_resource, pruner._reduction_factor) == (1, max_resource, 3)
    assert build_parser().parse_args(["--preset", "sasrec-id", "--pruner", "hyperband"]).pruner == "hyperband"


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_a_search_on_a_user_sample_picks_the_best_candidate_on_the_whole_validation_split(
    toy_root: Path, tmp_path: Path
) -> None:
    from crossan.zoo.runs.run import open_run
    from crossan.zoo.training.evaluation import evaluate_model, evaluation_users

    space = load_space(tiny_space(tmp_path), "sasrec-id")
    settings = StudySettings("sasrec-id", space, 3, tmp_path / "study", search_valid_users=40)
    arguments = toy_arguments(toy_root)
    dataset = arguments[0]
    study = run_study(settings, *arguments)
    assert study.user_attrs["identity"]["fixed values"]["valid_users"] == 40  # part of what the study is
    summary = write_outputs(study, settings)
    candidates = summary["final_candidates"]
    assert [c["trial"] for c in candidates] == [t.number for t in sorted(study.trials, key=lambda t: -t.value)]
    sample = evaluation_users(dataset.num_users, 40)
    assert sample is not None and len(sample) == 40
    for candidate in candidates:
        run = open_run(candidate["run_dir"])
        assert run.config["train"]["valid_users"] == 40  # every trial validated on the sample
        sampled = evaluate_model(run.model, run.dataset, run.features, "valid", users=sample).metrics["NDCG@10"]
        full = evaluate_model(run.model, run.dataset, run.features, "valid").metrics["NDCG@10"]
        assert candidate["sampled valid NDCG@10"] == study.trials[candidate["trial"]].value
        assert candidate["sampled valid NDCG@10"] == pytest.approx(sampled, abs=1e-6)
        assert candidate["full valid NDCG@10"] == pytest.approx(full, abs=1e-6)
    assert any(abs(c["sampled valid NDCG@10"] - c["full valid NDCG@10"]) > 1e-3 for c in candidates)
    best_on_full = max(candidates, key=lambda c: c["full valid NDCG@10"])
    assert summary["final_pick"] == summary["best_trial"] == best_on_full["trial"]
    assert summary["optuna_best_trial"] == study.best_trial.number
    assert summary["valid NDCG@10"] == best_on_full["full valid NDCG@10"]
    preset, values = read_recipe(settings.study_dir / "best-recipe.json")
    assert values == {**space.fixed, **study.trials[best_on_full["trial"]].params}  # no valid_users
    origin = json.loads((settings.study_dir / "best-recipe.json").read_text())["origin"]
    assert origin["best_trial"] == origin["final_pick"] == best_on_full["trial"]
    assert (
        f"**Picked trial {best_on_full['trial']}** on the whole validation split"
        in (settings.study_dir / "report.md").read_text()
    )


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
@pytest.mark.filterwarnings("ignore:Target and region quantiles")  # PED-ANOVA over few trials
def test_the_final_pick_can_overturn_optunas_best_and_ranks_each_candidate_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import optuna

    from crossan.zoo.tune import final

    space = load_space(tiny_space(tmp_path), "sasrec-id")
    settings = StudySettings("sasrec-id", space, 6, tmp_path / "study", search_valid_users=40)
    study = open_study(settings, {"kind": "toy", "name": "toy", "fingerprint": "f"}, FeatureSettings())
    # Sampled scores 0.1 to 0.4 (trial 3 is Optuna's best), a repeat of trial 3 and a pruned trial.
    for number, sampled in enumerate([0.1, 0.2, 0.3, 0.4]):
        trial = study.ask()
        trial.set_user_attr("run_dir", str(settings.study_dir / "trials" / f"trial-{number}"))
        settings.trial_space.sample(trial)
        study.tell(trial, sampled)
    repeat = study.ask(dict(study.trials[3].distributions))
    repeat.set_user_attr("repeats", 3)
    study.tell(repeat, 0.4)
    study.tell(study.ask(), state=optuna.trial.TrialState.PRUNED)
    # On the whole split the order turns: trial 3 is the worst of the three best on the sample.
    full = {"trial-0": 0.5, "trial-1": 0.30, "trial-2": 0.35, "trial-3": 0.05}
    ranked: list[str] = []

    def full_score(run_dir: Path, device: object = "cpu") -> float:
        ranked.append(run_dir.name)
        return full[run_dir.name]

    monkeypatch.setattr(final, "full_validation_score", full_score)
    summary = write_outputs(study, settings)
    assert study.best_trial.number == summary["optuna_best_trial"] == 3
    assert summary["final_pick"] == summary["best_trial"] == 2 and summary["valid NDCG@10"] == 0.35
    assert [(c["trial"], c["sampled valid NDCG@10"], c["full valid NDCG@10"]) for c in summary["final_candidates"]] == [
        (3, 0.4, 0.05),
        (2, 0.3, 0.35),
        (1, 0.2, 0.30),
    ]
    assert sorted(ranked) == ["trial-1", "trial-2", "trial-3"]  # trial 0 is no candidate; the repeat shares 3's run
    assert read_recipe(settings.study_dir / "best-recipe.json")[1] == {**space.fixed, **study.trials[2].params}

    write_outputs(study, settings)  # a rerun: the full-split scores are stored in the study
    assert len(ranked) == 3
    summary = write_outputs(study, dataclasses.replace(settings, final_candidates=4))
    assert ranked[3:] == ["trial-0"] and summary["final_pick"] == 0  # one more candidate, ranked once

    plain = write_outputs(study, dataclasses.replace(settings, search_valid_users=0))  # no sample: Optuna's best
    assert plain["best_trial"] == 3 and "final_pick" not in plain and len(ranked) == 4

    # The sample's size is one of the study's fixed values: another one is another study.
    with pytest.raises(ConfigError, match=r"another fixed values \(valid_users: 40 recorded, 80 now\)"):
        open_study(dataclasses.replace(settings, search_valid_users=80), study.user_attrs["data"], FeatureSettings())


def _open_at_once(settings: StudySettings, start: Barrier, opened: Queue[tuple[str, object]]) -> None:
    """One of several workers: wait for the others, then open the (new) study."""
    start.wait()
    try:
        study = open_study(settings, {"fingerprint": "f"}, FeatureSettings())
        opened.put(("ok", len(study.trials)))
    except Exception as error:  # noqa: BLE001 - the parent reports what any worker raised
        opened.put(("error", str(error)))


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_workers_started_together_open_one_new_study(tmp_path: Path) -> None:
    import multiprocessing

    context = multiprocessing.get_context("fork")  # the workers share this process's imports
    space = load_space(two_point_space(tmp_path), "sasrec-id")
    settings = StudySettings("sasrec-id", space, 4, tmp_path / "study", warm_start=({"lr": 0.004},))
    workers = 4
    start, opened = context.Barrier(workers), context.Queue()
    processes = [context.Process(target=_open_at_once, args=(settings, start, opened)) for _ in range(workers)]
    for process in processes:
        process.start()
    results = [opened.get(timeout=120) for _ in processes]
    for process in processes:
        process.join(timeout=60)
    assert [state for state, _ in results] == ["ok"] * workers, results
    # One of them created the study and enqueued the warm start; the others found it.
    assert sorted(count for _, count in results) == [1] * workers
