"""Bad inputs to the tuner and the experiment tables: a study reopened with another data set,
preset, space, fixed values or backbones; `--set` on every model family; malformed recipes,
spaces and table definitions; bad storage URLs and study folders; outputs written atomically,
and a study killed mid-trial that a rerun finishes. Each fault is one line naming its cause."""

from __future__ import annotations

import json
import random
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
import torch
from killing import PROJECT, kill_when
from rich.console import Console
from scripts import ScriptResult, run_main

from crossan.zoo.cli.tune import main as tune_main
from crossan.zoo.core.errors import ConfigError, DivergedError, NonFiniteError, NoResultError, UserError
from crossan.zoo.features.settings import FeatureSettings
from crossan.zoo.models import architectures, list_models, preset_config
from crossan.zoo.runs.settings import split_options
from crossan.zoo.training.trainer import TrainConfig
from crossan.zoo.tune import report as report_module
from crossan.zoo.tune import study as study_module
from crossan.zoo.tune.recipe import read_recipe, recipe_origin, write_recipe
from crossan.zoo.tune.space import default_space, load_space
from crossan.zoo.tune.study import OPEN_LOCK, StudySettings, open_study

pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage")


def run_tuner(*args: str) -> ScriptResult:
    """`crossan tune ARGS` in this process (no new interpreter importing torch)."""
    return run_main(tune_main, *args)


def amazon_folder(root: Path, seed: int, users: int = 40, items: int = 30) -> Path:
    """A small Amazon-layout data set: `items` titled items, `users` random sequences of 3 to 8."""
    rng = random.Random(seed)
    ids = [f"P{i:03d}" for i in range(items)]
    root.mkdir(parents=True)
    (root / "items.tsv").write_text("".join(f"{item}\tProduct {item}\n" for item in ids))
    (root / "users.tsv").write_text(
        "".join(f"U{u:04d}\t{' '.join(rng.sample(ids, rng.randint(3, 8)))}\n" for u in range(users))
    )
    return root


def one_line_error(result: ScriptResult) -> str:
    assert result.returncode == 2, result.stderr[-2000:]
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: ")
    return line[len("error: ") :]


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One real 1-trial study of crossan-t (the example of docs/training.md, at 1 epoch) on a
    small Amazon set A, and a set B with the same catalogue and other users."""
    base = tmp_path_factory.mktemp("tuned")
    paths = {
        "A": amazon_folder(base / "A", seed=1),
        "B": amazon_folder(base / "B", seed=2),
        "study": base / "study",
        "cache": base / "cache",
    }
    result = run_tuner(*study_args(paths, "A"))
    assert result.returncode == 0, result.stderr[-3000:]
    return paths


def study_args(paths: dict[str, Path], data: str, *extra: str) -> list[str]:
    return [
        "--preset",
        "crossan-t",
        "--data",
        "amazon",
        "--data-root",
        str(paths[data]),
        "--set",
        "epochs=1",
        "--trials",
        "1",
        "--study",
        str(paths["study"]),
        "--cache-dir",
        str(paths["cache"]),
        *extra,
    ]


def stored_trials(study: Path) -> int:
    with sqlite3.connect(study / "study.db") as db:
        return db.execute("select count(*) from trials").fetchone()[0]


# 1. A study knows its origin.


def test_the_best_recipe_records_data_set_preset_space_and_study(tuned: dict[str, Path]) -> None:
    recipe = json.loads((tuned["study"] / "best-recipe.json").read_text())
    origin = recipe["origin"]
    assert recipe["preset"] == origin["preset"] == "crossan-t" and recipe["set"]["epochs"] == 1
    assert origin["study"] == "study" and origin["storage"] == f"sqlite:///{tuned['study'].resolve()}/study.db"
    assert {key: origin["data"][key] for key in ("kind", "name", "root")} == {
        "kind": "amazon",
        "name": "A",
        "root": str(tuned["A"].resolve()),
    }
    assert len(origin["data"]["fingerprint"]) == len(origin["data"]["sequences"]) == 16
    assert origin["space"]["file"].endswith("side-network.toml") and origin["space"]["fixed"]["epochs"] == 1
    assert "lr" in origin["space"]["params"] and origin["feature_settings"]["source"] == "tiny"
    assert recipe_origin(tuned["study"] / "best-recipe.json") == (
        f"recipe {tuned['study'] / 'best-recipe.json'}: trial 0 of study 'study', valid NDCG@10 "
        f"{origin['valid NDCG@10']:.4f}, tuned on amazon data set 'A' at {tuned['A'].resolve()} (fingerprint "
        f"{origin['data']['fingerprint']}, sequences {origin['data']['sequences']}), preset crossan-t, space "
        f"{origin['space']['file']}"
    )


def test_a_study_reopened_on_another_data_set_stops_and_trains_nothing(tuned: dict[str, Path]) -> None:
    recipe = (tuned["study"] / "best-recipe.json").read_bytes()
    error = one_line_error(run_tuner(*study_args(tuned, "B"), "--trials", "2"))
    assert error.startswith(
        f"study 'study' in sqlite:///{tuned['study'].resolve()}/study.db was started with "
        f"another data set (amazon 'A' at {tuned['A'].resolve()}, 40 users, fingerprint "
    )
    assert f"amazon 'B' at {tuned['B'].resolve()}, 40 users" in error
    assert stored_trials(tuned["study"]) == 1 and len(list((tuned["study"] / "trials").iterdir())) == 1
    assert (tuned["study"] / "best-recipe.json").read_bytes() == recipe


@pytest.mark.parametrize(
    ("extra", "differs"),
    [
        (["--set", "epochs=2"], "another fixed values (epochs: 1 recorded, 2 now)"),
        (["--set", "dropout=0.1"], "another search space (dropout: {"),
        (["--backbone", "text=minilm"], 'another feature settings (overrides: [] recorded, [["text", "minilm"]] now)'),
        (["--preset", "sasrec-id"], 'another preset ("crossan-t" recorded, "sasrec-id" now)'),
        (["--pruner", "hyperband"], 'another pruner ("median" recorded, "hyperband" now)'),
    ],
)
def test_a_study_reopened_with_other_settings_names_what_differs(
    tuned: dict[str, Path], extra: list[str], differs: str
) -> None:
    error = one_line_error(run_tuner(*study_args(tuned, "A", *extra)))
    assert differs in error and error.endswith("rerun it with those settings, or give another --study folder")
    assert stored_trials(tuned["study"]) == 1


def test_the_same_command_again_continues_the_study_without_training(tuned: dict[str, Path]) -> None:
    result = run_tuner(*study_args(tuned, "A"), "--json")
    assert result.returncode == 0 and json.loads(result.stdout)["finished_trials"] == 1
    assert stored_trials(tuned["study"]) == 1


def test_a_study_whose_identity_predates_a_key_is_not_compared_on_it(tuned: dict[str, Path], tmp_path: Path) -> None:
    """Studies started before the pruner was part of a study's identity continue as before."""
    paths = {**tuned, "study": Path(shutil.copytree(tuned["study"], tmp_path / "study"))}
    storage = f"sqlite:///{paths['study'] / 'study.db'}"
    (summary,) = optuna.get_all_study_summaries(storage)
    study = optuna.load_study(study_name=summary.study_name, storage=storage)
    identity = study.user_attrs["identity"]
    del identity["pruner"]
    study.set_user_attr("identity", identity)
    result = run_tuner(*study_args(paths, "A"), "--pruner", "hyperband", "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout)["finished_trials"] == 1 and stored_trials(paths["study"]) == 1


# 2. --set works for every model family.

# One preset of every model family (config class): the first in name order.
FAMILIES = {type(preset_config(name)): name for name in reversed(list_models())}


@pytest.mark.parametrize("preset", sorted(FAMILIES.values()))
def test_set_epochs_is_accepted_for_every_model_family(preset: str, tmp_path: Path) -> None:
    space = load_space(default_space(preset), preset)
    settings = StudySettings(preset, space, 1, tmp_path / "study", overrides=(("epochs", 1),))
    assert settings.trial_space.parameters == space.parameters
    train, model = split_options({**settings.trial_space.fixed, **{p.name: p.corners()[0] for p in space.parameters}})
    assert TrainConfig(**train).epochs == 1 and type(preset_config(preset, **model)) in FAMILIES
    assert set(FAMILIES) == {config_class for config_class, _ in architectures().values()}


def test_set_on_a_tuned_field_fixes_it_instead_of_sampling_it(tmp_path: Path) -> None:
    space = load_space(default_space("sasrec-id"), "sasrec-id")
    settings = StudySettings("sasrec-id", space, 1, tmp_path / "study", overrides=(("lr", 0.002),))
    assert settings.trial_space.fixed["lr"] == 0.002 and "lr" not in {p.name for p in settings.trial_space.parameters}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ((("lr", "fast"),), "--set lr=\"fast\" (with the space {space}): lr needs a number, got 'fast' (str)"),
        (
            (("score_temperature", 0.0),),
            "--set score_temperature=0.0 (with the space {space}): backbone_prior_inference_weight needs cosine scores",
        ),
        (
            tuple(
                (name, 0.1)
                for name in (
                    "lr",
                    "adapter_lr",
                    "adapter_dim",
                    "dropout",
                    "attention_dropout",
                    "score_temperature",
                    "backbone_prior_weight",
                    "item_id_term",
                    "sampled_negatives",
                    "sliding_windows",
                    "weight_decay",
                )
            ),
            "--set fixes every parameter of {space}: nothing is left to tune",
        ),
    ],
)
def test_a_bad_set_value_is_one_line_naming_it(tmp_path: Path, overrides: tuple, message: str) -> None:
    space = load_space(default_space("crossan-t"), "crossan-t")
    with pytest.raises(ConfigError) as raised:
        StudySettings("crossan-t", space, 1, tmp_path / "study", overrides=overrides)
    assert str(raised.value).startswith(message.format(space=space.path)) and "\n" not in str(raised.value)


@pytest.mark.parametrize(
    ("start", "message"),
    [
        ({"lr": 0.5, "dropout": 0.1}, "lr=0.5 is outside the float range [0.0001, 0.01] (log) of lr in {space}"),
        ({"lr": "fast"}, 'lr="fast" is outside the float range [0.0001, 0.01] (log) of lr in {space}'),
        ({"batch_size": 100}, "batch_size=100 is outside the choices 64, 128, 256 of batch_size in {space}"),
        # A number never stands for a boolean choice, nor a boolean for a number (True == 1 in Python).
        ({"sliding_windows": 1}, "sliding_windows=1 is outside the choices false, true of sliding_windows in {space}"),
        (
            {"weight_decay": False},
            "weight_decay=false is outside the choices 0.0, 0.001, 0.01, 0.1 of weight_decay in {space}",
        ),
        (
            {"epochs": 30, "patience": 5},
            "names none of the parameters the study samples (lr, dropout, attention_dropout, score_temperature, "
            "sliding_windows, batch_size, weight_decay) of {space}",
        ),
    ],
)
def test_a_bad_warm_start_is_one_line_naming_the_key_the_value_and_the_file(
    tmp_path: Path, start: dict, message: str
) -> None:
    space = load_space(default_space("sasrec-id"), "sasrec-id")
    with pytest.raises(ConfigError) as raised:
        StudySettings(
            "sasrec-id",
            space,
            2,
            tmp_path / "study",
            warm_start=({"lr": 0.001}, start),
            warm_start_files=("a/best-recipe.json", "b/best-recipe.json"),
        )
    assert str(raised.value) == f"--warm-start b/best-recipe.json: {message.format(space=space.path)}"
    assert not (tmp_path / "study").exists()


def test_a_warm_start_keeps_the_sampled_parameters_only_as_their_distributions_hold_them(tmp_path: Path) -> None:
    space_file = tmp_path / "space.toml"
    space_file.write_text(
        '[params.lr]\ntype = "float"\nlow = 0.0001\nhigh = 0.01\n\n'
        '[params.epochs]\ntype = "int"\nlow = 2\nhigh = 9\n\n'
        '[params.dropout]\ntype = "float"\nlow = 0\nhigh = 0.5\n'
    )
    space = load_space(space_file, "sasrec-id")
    # lr is fixed by --set: the warm start's lr (even one outside the range) is no longer a parameter.
    start = {"lr": 0.5, "epochs": 4, "dropout": 0, "patience": 3}
    settings = StudySettings("sasrec-id", space, 1, tmp_path / "s", overrides=(("lr", 0.002),), warm_start=(start,))
    (params,) = settings.warm_start_params
    assert params == {"epochs": 4, "dropout": 0.0} and isinstance(params["dropout"], float)
    with pytest.raises(ConfigError, match=r"^--warm-start #1: epochs=4.0 is outside the int range \[2, 9\] of epochs"):
        StudySettings("sasrec-id", space, 1, tmp_path / "s", warm_start=({"epochs": 4.0},))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"search_valid_users": -1}, "--search-valid-users must be 0 (validate on every user) or positive, got -1"),
        ({"search_valid_users": 50, "final_candidates": 0}, "--final-candidates must be at least 1, got 0"),
        (
            {"search_valid_users": 50, "overrides": (("valid_users", 10),)},
            "--set valid_users and --search-valid-users both fix the validation sample; give one",
        ),
        ({"pruner": "hyper"}, "--pruner must be one of median, halving, hyperband, got 'hyper'"),
    ],
)
def test_bad_search_settings_are_one_line(tmp_path: Path, options: dict, message: str) -> None:
    space = load_space(default_space("sasrec-id"), "sasrec-id")
    with pytest.raises(ConfigError) as raised:
        StudySettings("sasrec-id", space, 1, tmp_path / "study", **options)
    assert str(raised.value).startswith(message) and "\n" not in str(raised.value)


def test_final_candidates_without_a_validation_sample_is_one_line(tmp_path: Path) -> None:
    """Ranking the best trials again on every user only means something after a sampled search."""
    error = one_line_error(
        run_tuner("--preset", "sasrec-id", "--study", str(tmp_path / "study"), "--final-candidates", "2")
    )
    assert error.startswith("--final-candidates needs --search-valid-users"), error
    assert not (tmp_path / "study").exists()


def test_warm_start_files_that_are_missing_or_bad_stop_before_any_data_is_read(tmp_path: Path) -> None:
    missing = tmp_path / "missing.json"
    out_of_range = write_recipe(tmp_path / "wide.json", "sasrec-id", {"lr": 0.5, "dropout": 0.1}, {})
    not_json = tmp_path / "half.json"
    not_json.write_text('{"preset": "sasrec-id", "set": {"lr": 0.0')
    space = default_space("sasrec-id")
    for recipe, message in [
        (missing, f"{missing}: no such recipe file"),
        (not_json, f"{not_json}: not valid JSON (line 1, column 42"),
        (out_of_range, f"--warm-start {out_of_range}: lr=0.5 is outside the float range [0.0001, 0.01] (log) of lr in"),
    ]:
        error = one_line_error(
            run_tuner(
                "--preset",
                "sasrec-id",
                "--data",
                "amazon",
                "--data-root",
                str(tmp_path / "no-data-here"),  # read after the settings: never reached
                "--study",
                str(tmp_path / "new" / "study"),
                "--warm-start",
                str(recipe),
            )
        )
        assert error.startswith(message), error
        assert not (tmp_path / "new").exists()
    assert str(space) in error


def test_the_new_tune_options_reach_the_study_and_the_outputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from crossan.zoo.cli import tune as tune_cli

    recipes = [
        write_recipe(tmp_path / f"{name}.json", "sasrec-id", {"lr": lr, "epochs": 30}, {})
        for name, lr in (("one", 0.001), ("two", 0.002))
    ]
    seen: dict = {}

    def run_study(settings, dataset, description, features, device, console):
        seen["settings"], seen["users"] = settings, dataset.num_users
        return "the study"

    def write_outputs(study, settings, device="cpu"):
        seen["outputs"] = (study, settings, str(device))
        return {"best_trial": 2, "final_pick": 2}

    monkeypatch.setattr(tune_cli, "run_study", run_study)
    monkeypatch.setattr(tune_cli, "write_outputs", write_outputs)
    result = run_tuner(
        "--preset",
        "sasrec-id",
        "--data",
        "amazon",
        "--data-root",
        str(amazon_folder(tmp_path / "data", seed=1)),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--study",
        str(tmp_path / "study"),
        "--set",
        "epochs=4",
        "--pruner",
        "hyperband",
        "--warm-start",
        *map(str, recipes),
        "--search-valid-users",
        "20",
        "--final-candidates",
        "2",
        "--device",
        "cpu",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"best_trial": 2, "final_pick": 2}
    settings = seen["settings"]
    assert seen["outputs"] == ("the study", settings, "cpu") and seen["users"] == 40
    assert settings.warm_start_params == ({"lr": 0.001}, {"lr": 0.002})
    assert settings.warm_start_files == tuple(map(str, recipes))
    assert (settings.pruner, settings.trial_epochs, settings.search_valid_users, settings.final_candidates) == (
        "hyperband",
        4,
        20,
        2,
    )
    assert settings.trial_space.fixed["valid_users"] == 20 and "valid_users" not in settings.recipe_fixed


# 3. Recipes, spaces, study folders and storage URLs.


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            b'{"preset": "sasrec-id", "sett": {"epochs": 1}}',
            "unknown key(s) 'sett'; a recipe has 'preset', 'set', 'origin'",
        ),
        (b"", "empty, expected JSON"),
        (b'{"preset": "sasrec-id", "set": {"lr": 0.0', "not valid JSON (line 1, column 42: Expecting ',' delimiter)"),
        (b"preset = 'sasrec-id'\n", "not valid JSON (line 1, column 1"),
        (b'{"preset": "caf\xe9"}', "not UTF-8 text (byte 15)"),
        (b'["sasrec-id"]', 'a recipe is an object with a "preset" name and a "set" object of values'),
    ],
)
def test_a_bad_recipe_file_is_one_line_naming_it(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "recipe.json"
    path.write_bytes(content)
    for read in (read_recipe, recipe_origin):
        with pytest.raises(UserError) as raised:
            read(path)
        assert str(raised.value).startswith(f"{path}: {message}") and "\n" not in str(raised.value)


def test_a_hand_written_recipe_says_it_has_no_origin(tmp_path: Path) -> None:
    path = write_recipe(tmp_path / "recipe.json", "sasrec-id", {"epochs": 1}, {})
    assert recipe_origin(path) == f"recipe {path}: no origin recorded (written by hand or by another program)"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "the search space file is empty"),
        (b"\n# a comment alone\n", "no [params.NAME] table, nothing to tune"),
        (b'[params.lr]\ntype = "float"\nlow = 0.001\nhigh = ', "not TOML (Invalid value (at end of document))"),
        (b'[params.lr]\ntype = "caf\xe9"\n', "not UTF-8 text (byte 23)"),
        (
            b'fixed = 3\n[params.lr]\ntype = "categorical"\nchoices = [0.1]\n',
            "fixed and params must be tables ([fixed], [params.NAME])",
        ),
        (
            b'[fixed]\nlr = 0.1\n[params.lr]\ntype = "categorical"\nchoices = [0.1]\n',
            "lr both fixed and tuned; keep one",
        ),
    ],
)
def test_a_bad_space_file_is_one_line_naming_it(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "space.toml"
    path.write_bytes(content)
    with pytest.raises(UserError) as raised:
        load_space(path, "sasrec-id")
    assert str(raised.value).startswith(f"{path}: {message}") and "\n" not in str(raised.value)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--study", "{file}"], "--study {file}: is a file; a study is a folder"),
        (["--study", "{file}/study"], "--study {file}/study: cannot make the folder (Not a directory)"),
        (
            ["--storage", "not a url"],
            "--storage 'not a url': not a database URL (e.g. sqlite:///study.db, postgresql://user@host/db)",
        ),
        (["--storage", "sqlite://"], "--storage sqlite://: an in-memory database, lost when the command ends"),
        (
            ["--storage", "sqlite:///{tmp}/missing/folder/study.db"],
            "--storage sqlite:///{tmp}/missing/folder/study.db: cannot open the database "
            "(unable to open database file)",
        ),
        (
            ["--storage", "postgresql://tuner:secret@localhost/studies"],
            "--storage postgresql://tuner:***@localhost/studies: no database driver for it is installed "
            "(No module named",
        ),
        (
            ["--storage", "nosuchdb://host/studies"],
            "--storage nosuchdb://host/studies: cannot open the database "
            "(Can't load plugin: sqlalchemy.dialects:nosuchdb)",
        ),
    ],
)
def test_a_bad_study_folder_or_storage_is_one_line_and_leaves_no_folder(
    tmp_path: Path, options: list[str], message: str
) -> None:
    data = amazon_folder(tmp_path / "data", seed=1)
    (tmp_path / "afile").write_text("not a folder\n")
    names = {"file": tmp_path / "afile", "tmp": tmp_path}
    error = one_line_error(
        run_tuner(
            "--preset",
            "sasrec-id",
            "--data",
            "amazon",
            "--data-root",
            str(data),
            "--trials",
            "1",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--study",
            str(tmp_path / "new" / "study"),
            *(o.format(**names) for o in options),
        )
    )
    assert error.startswith(message.format(**names)) and "secret" not in error
    assert not (tmp_path / "new").exists() and not (tmp_path / "missing").exists()
    assert (tmp_path / "afile").read_text() == "not a folder\n"


def test_a_study_of_an_older_tuner_that_recorded_nothing_stops(tmp_path: Path) -> None:
    space = load_space(default_space("sasrec-id"), "sasrec-id")
    settings = StudySettings("sasrec-id", space, 1, tmp_path / "study")
    settings.study_dir.mkdir()
    old = optuna.create_study(study_name="study", storage=settings.storage_url, direction="maximize")
    old.tell(old.ask(), 0.1)
    with pytest.raises(ConfigError, match="records no data set, preset or search space"):
        open_study(settings, {"fingerprint": "f"}, FeatureSettings())


# 4. Outputs: atomic, and a study with nothing to recommend says so.


def finished_study(tmp_path: Path, states: list[optuna.trial.TrialState]) -> tuple[optuna.Study, StudySettings]:
    """A study with trials told by hand, as training would have left them."""
    space = load_space(default_space("sasrec-id"), "sasrec-id")
    settings = StudySettings("sasrec-id", space, len(states), tmp_path / "study", overrides=(("epochs", 1),))
    study = open_study(
        settings,
        {
            "kind": "amazon",
            "name": "A",
            "root": "/data/A",
            "fingerprint": "f",
            "sequences": "s",
            "users": 40,
            "items": 30,
        },
        FeatureSettings(),
    )
    for number, state in enumerate(states):
        trial = study.ask()
        settings.trial_space.sample(trial)
        study.tell(trial, 0.1 * (number + 1) if state == optuna.trial.TrialState.COMPLETE else None, state=state)
    return study, settings


def outputs(study_dir: Path) -> dict[str, bytes]:
    """The files of a study folder besides its database and the lock its workers open it under, with their bytes."""
    kept = ("study.db", OPEN_LOCK)
    return {path.name: path.read_bytes() for path in study_dir.iterdir() if path.is_file() and path.name not in kept}


@pytest.mark.filterwarnings("ignore:Some regimes for parameter")  # PED-ANOVA over three trials
def test_a_failure_while_outputs_are_written_leaves_every_file_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    complete = optuna.trial.TrialState.COMPLETE
    study, settings = finished_study(tmp_path, [complete, complete])
    report_module.write_outputs(study, settings)
    before = outputs(settings.study_dir)
    assert set(before) == {"best-recipe.json", "report.md", "trials.png"}

    def savefig_cut_short(self, path, **options) -> None:
        Path(path).write_bytes(b"\x89PNG half")
        raise OSError("disk full")

    monkeypatch.setattr("matplotlib.figure.Figure.savefig", savefig_cut_short)
    study.tell(study.ask({"lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)}), 0.9)
    with pytest.raises(OSError, match="disk full"):
        report_module.write_outputs(study, settings)
    assert outputs(settings.study_dir) == before, "a file was replaced by half of one, or a temporary file was left"


def test_a_study_without_a_complete_trial_is_one_line(tmp_path: Path) -> None:
    pruned, failed = optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL
    study, settings = finished_study(tmp_path, [pruned, pruned, failed])
    with pytest.raises(NoResultError) as raised:
        report_module.write_outputs(study, settings)
    assert str(raised.value) == (
        f"study 'study' in {settings.shown_storage} has no complete trial (2 pruned, "
        "1 fail): nothing to recommend; rerun with more --trials or a longer --timeout"
    )
    assert not (settings.study_dir / "best-recipe.json").exists()


def study_whose_training_raises(
    error: Exception, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[StudySettings, Callable[[], optuna.Study]]:
    """A 2-trial sasrec-id study on a small Amazon set whose every training raises `error`; its
    settings and a call that runs it."""
    from crossan.zoo.data import read_amazon
    from crossan.zoo.runs.pipeline import describe_data

    def fails(*args, **kwargs):
        raise error

    monkeypatch.setattr(study_module, "train_and_save", fails)
    dataset = read_amazon(amazon_folder(tmp_path / "data", seed=1))
    space = load_space(default_space("sasrec-id"), "sasrec-id")
    settings = StudySettings("sasrec-id", space, 2, tmp_path / "study", overrides=(("epochs", 1),))
    return settings, lambda: study_module.run_study(
        settings, dataset, describe_data("amazon", dataset), FeatureSettings(), torch.device("cpu"), Console(quiet=True)
    )


def test_a_diverged_trial_counts_as_pruned_and_the_study_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    diverged = DivergedError("the training loss is nan at epoch 1, step 3: the model diverged")
    settings, run = study_whose_training_raises(diverged, tmp_path, monkeypatch)
    study = run()
    assert [t.state.name for t in study.trials] == ["PRUNED", "PRUNED"]
    assert study.trials[0].user_attrs["diverged"].startswith("the training loss is nan")
    with pytest.raises(NoResultError, match=r"has no complete trial \(2 diverged\)"):
        report_module.write_outputs(study, settings)


def test_nan_inputs_in_a_trial_stop_the_study_rather_than_prune(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NaN in the feature cache is a defect of the inputs, not of the trial's values: the study
    stops with its one line instead of counting every trial as diverged."""
    nan_cache = NonFiniteError("cache.safetensors (text states): 3 non-finite value(s) in 1 row(s): row 2")
    _, run = study_whose_training_raises(nan_cache, tmp_path, monkeypatch)
    with pytest.raises(NonFiniteError, match="text states"):
        run()


# Experiment tables: definitions and --out.


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "the table definition is empty"),
        (b'title = "caf\xe9"\n', "not UTF-8 text (byte 12)"),
        (b'title = "t"\n[[runs]]\nname = "a"\npreset = ', "not valid TOML"),
        (b"runs = 3\n", "runs must be a list of [[runs]] tables, got 3"),
        (
            b'[[runs]]\nname = "a"\npreset = "crossan-t"\nset = 3\n',
            "run 'a': set must be a table of config values, got 3",
        ),
        (b'[[runs]]\nname = 7\npreset = "crossan-t"\n', "run 1: name must be a string, got 7"),
        (
            b'sweep = { parameter = "lr", log_scal = true }\n[[runs]]\nname = "a"\npreset = "crossan-t"\nvalue = 1\n',
            "sweep takes `parameter` and `log_scale`; unknown: log_scal",
        ),
        (
            b'[[runs]]\nname = "a"\npreset = "crossan-t"\nset = { adapter_dim = "wide" }\n',
            "run 'a': adapter_dim needs an integer",
        ),
    ],
)
def test_a_bad_table_definition_is_one_line_naming_it(tmp_path: Path, content: bytes, message: str) -> None:
    from crossan.zoo.experiments import load_table

    path = tmp_path / "table.toml"
    path.write_bytes(content)
    with pytest.raises(UserError) as raised:
        load_table(str(path))
    assert str(raised.value).startswith(f"{path}: {message}") and "\n" not in str(raised.value)


def test_experiments_out_naming_a_file_is_one_line(tmp_path: Path) -> None:
    from crossan.zoo.cli.experiments import main as experiments_main

    (tmp_path / "out").write_text("a file\n")
    result = run_main(experiments_main, "fusion", "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and result.stderr.splitlines() == [
        f"error: --out {tmp_path / 'out'}: {tmp_path / 'out'} is a file; the table's runs and report go in a folder"
    ]
    assert (tmp_path / "out").read_text() == "a file\n"


# kill -9 in the middle of a trial.


@pytest.mark.slow
def test_a_study_killed_mid_trial_is_finished_by_a_rerun(tmp_path: Path) -> None:
    data = amazon_folder(tmp_path / "data", seed=3, users=600, items=200)
    study = tmp_path / "study"
    command = [
        sys.executable,
        "-m",
        "crossan",
        "tune",
        "--preset",
        "sasrec-id",
        "--data",
        "amazon",
        "--data-root",
        str(data),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--study",
        str(study),
        "--trials",
        "2",
        "--heartbeat",
        "1",
        "--set",
        "epochs=40",
        "--set",
        "patience=40",
    ]

    def first_trial_midway(lines: list[str]) -> bool:
        states = list((study / "trials").glob("*/trainer_state.json"))
        return len(states) == 1 and len(json.loads(states[0].read_text() or "{}").get("history", [])) >= 2

    kill_when(command, first_trial_midway)
    (killed,) = (study / "trials").iterdir()
    started = (killed / "config.json").stat().st_mtime
    time.sleep(3)  # past the grace period (twice the heartbeat): the killed trial counts as failed
    result = subprocess.run([*command, "--json"], cwd=PROJECT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout)["finished_trials"] == 2
    assert (killed / "config.json").stat().st_mtime == started, "the killed trial started over"
    assert (killed / "metrics.json").is_file() and len(list((study / "trials").iterdir())) == 2
    assert read_recipe(study / "best-recipe.json")[0] == "sasrec-id"
    assert not list(study.glob(".*.tmp")), "a temporary file was left in the study folder"
