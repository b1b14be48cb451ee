"""Fault injection on training, run folders and evaluation: every bad setup stops with one line
and leaves what was there untouched (the rows of docs/reliability.md, "Runs" and "Numbers")."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from scripts import PROJECT, run_script

from crossan.zoo.core.errors import ConfigError, NonFiniteError
from crossan.zoo.training.metrics import target_ranks, target_ranks_excluding
from crossan.zoo.training.trainer import TrainConfig


def folder_hashes(folder: Path) -> dict[str, str]:
    """Every file under `folder` by relative path -> sha256 (what "untouched" is checked by)."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def one_line_error(result, *fragments: str) -> None:
    """The command failed with status 2 and one `error:` line holding every fragment."""
    assert result.returncode == 2, (result.stdout, result.stderr)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


@pytest.fixture()
def run_copy(toy_run: Path, tmp_path: Path) -> Path:
    """A copy of the session's finished toy run, free to damage."""
    return Path(shutil.copytree(toy_run, tmp_path / "run"))


def data_options(toy_root: Path, cache_dir: Path) -> list[str]:
    return ["--data", "microlens", "--data-root", str(toy_root), "--cache-dir", str(cache_dir)]


# --- a run folder belongs to one run -----------------------------------------------------------


@pytest.mark.parametrize(
    "command, named",
    [
        (["--preset", "crossan-tiva", "--epochs", "1"], "holds a crossan-tiva run (finished)"),
        (
            ["--preset", "crossan-tiva", "--epochs", "3", "--seed", "7", "--lr", "0.01"],
            "train.epochs (1 there, 3 now); train.lr (0.001 there, 0.01 now); train.seed (42 there, 7 now)",
        ),
        (["--preset", "sasrec-id", "--epochs", "1"], "preset ('crossan-tiva' there, 'sasrec-id' now)"),
    ],
)
def test_a_new_command_into_a_finished_run_stops_and_changes_nothing(toy_run, toy_root, cache_dir, command, named):
    before = folder_hashes(toy_run)
    result = run_script("train", *command, *data_options(toy_root, cache_dir), "--run-dir", str(toy_run))
    one_line_error(result, named, f"--resume {toy_run}", "--overwrite")
    assert folder_hashes(toy_run) == before


def test_a_killed_run_is_not_continued_by_a_plain_command(run_copy, toy_root, cache_dir):
    """A run folder whose run did not finish (no metrics, state not finished) refuses too."""
    state = json.loads((run_copy / "trainer_state.json").read_text())
    (run_copy / "trainer_state.json").write_text(json.dumps({**state, "finished": False}))
    (run_copy / "metrics.json").unlink()
    before = folder_hashes(run_copy)
    result = run_script(
        "train",
        "--preset",
        "crossan-tiva",
        "--epochs",
        "2",
        "--lr",
        "0.01",
        *data_options(toy_root, cache_dir),
        "--run-dir",
        str(run_copy),
    )
    one_line_error(result, "killed or running after epoch 1", "train.epochs (1 there, 2 now)")
    assert folder_hashes(run_copy) == before


def test_run_dir_that_is_a_file_or_holds_other_files(tmp_path, toy_root, cache_dir):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    result = run_script("train", "--preset", "sasrec-id", *data_options(toy_root, cache_dir), "--run-dir", str(a_file))
    one_line_error(result, "is a file, not a folder")
    other = tmp_path / "other"
    other.mkdir()
    (other / "thesis.tex").write_text("mine")
    for extra in ([], ["--overwrite"]):
        result = run_script(
            "train", "--preset", "sasrec-id", *data_options(toy_root, cache_dir), "--run-dir", str(other), *extra
        )
        one_line_error(result, "holds files that are not a run (thesis.tex)")
    assert (other / "thesis.tex").read_text() == "mine" and a_file.read_text() == "mine"


def test_overwrite_replaces_the_run(run_copy, toy_root, cache_dir):
    result = run_script(
        "train",
        "--preset",
        "sasrec-id",
        "--epochs",
        "1",
        *data_options(toy_root, cache_dir),
        "--run-dir",
        str(run_copy),
        "--overwrite",
    )
    assert result.returncode == 0, result.stderr
    assert json.loads((run_copy / "config.json").read_text())["preset"] == "sasrec-id"
    assert run_script("evaluate", "--run", str(run_copy)).returncode == 0


@pytest.mark.parametrize("option", [["--overwrite"], ["--cache-dir", "elsewhere"], ["--run-dir", "x"]])
def test_resume_refuses_options_it_cannot_apply(toy_run, option):
    one_line_error(run_script("train", "--resume", str(toy_run), *option), "--resume takes the run's own settings")


# --- options that do not apply are refused, not dropped ---------------------------------------


@pytest.mark.parametrize(
    "options, named",
    [
        (["--baseline", "popularity", "--device", "cuda"], "--device applies to runs"),
        (["--run", "RUN", "--mi-neighbours", "5"], "--mi-neighbours applies to --mutual-information only"),
        (["--baseline", "popularity", "--gate-heatmap", "x.png"], "analyse a run"),
    ],
)
def test_evaluate_refuses_options_that_change_nothing(toy_run, options, named):
    one_line_error(run_script("evaluate", *[str(toy_run) if o == "RUN" else o for o in options]), named)


def test_evaluate_data_root_of_another_data_set_is_refused(toy_run, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "ml_titles.csv").write_text("".join(f"P{i},product {i}\n" for i in range(8)))
    (other / "ml_pairs.csv").write_text("".join(f"U{u},P{(u + k) % 8},{k}\n" for u in range(6) for k in range(5)))
    one_line_error(
        run_script("evaluate", "--run", str(toy_run), "--data-root", str(other)),
        "is not the one",
        "was trained on",
        "`evaluate.py --data KIND` ranks another catalogue zero-shot",
    )
    # Named as another data set, it is ranked zero-shot, which needs every modality the run reads.
    one_line_error(
        run_script("evaluate", "--run", str(toy_run), "--data", "microlens", "--data-root", str(other)),
        "image",
    )
    one_line_error(run_script("evaluate", "--run", str(toy_run), "--data", "amazon"), "--data amazon needs --data-root")


@pytest.mark.parametrize(
    "options, named",
    [
        (["--preset", "crossan-t", "--cover-dir", "pics"], "--cover-dir applies to --data microlens only"),
        (["--preset", "crossan-t", "--data", "microlens", "--backbone", "image=vit"], "which crossan-t does not read"),
        (["--preset", "sasrec-id", "--text-max-tokens", "12"], "--text-max-tokens applies to the text backbone"),
        (["--preset", "crossan-t", "--allow-missing-media"], "--allow-missing-media applies to covers and videos"),
        (["--preset", "sasrec-id", "--overwrite"], "--overwrite replaces the run in --run-dir: give --run-dir"),
    ],
)
def test_train_refuses_options_that_change_nothing(options, named, tmp_path):
    one_line_error(run_script("train", *options, "--cache-dir", str(tmp_path)), named)


# --- non-finite numbers stop, never score -----------------------------------------------------


def test_a_nan_score_is_an_error_not_a_hit():
    scores = torch.tensor([[0.1, float("nan"), 0.3], [0.2, 0.1, 0.0]])
    with pytest.raises(NonFiniteError, match=r"1 non-finite value.* row 0"):
        target_ranks(scores, torch.tensor([1, 0]), None)
    with pytest.raises(NonFiniteError, match="user 'u7'"):
        target_ranks_excluding(
            scores, torch.tensor([1, 0]), torch.tensor([0]), torch.tensor([2]), lambda row: f"user {'u7'!r}"
        )
    finite = torch.tensor([[0.1, 0.5, 0.3]])
    assert target_ranks(finite, torch.tensor([1]), None).tolist() == [1.0]


def test_nan_ranks_are_not_averaged():
    from crossan.zoo.training.metrics import metrics_from_ranks

    assert metrics_from_ranks(torch.tensor([1.0, math.inf]))["HR@10"] == 0.5
    with pytest.raises(NonFiniteError, match="1 of 2 are NaN"):
        metrics_from_ranks(torch.tensor([1.0, math.nan]))


@pytest.mark.parametrize(
    "options", [["--lr", "nan"], ["--lr", "inf"], ["--set", "adapter_lr=NaN"], ["--set", "weight_decay=-Infinity"]]
)
def test_non_finite_options_are_refused_where_they_enter(options, tmp_path):
    one_line_error(
        run_script("train", "--preset", "sasrec-id", *options, "--cache-dir", str(tmp_path)), "needs finite numbers"
    )


def test_config_fields_reject_nan():
    with pytest.raises(ConfigError, match="lr needs finite numbers, got nan"):
        TrainConfig(lr=math.nan)


def test_a_run_with_nan_weights_does_not_evaluate(run_copy):
    weights = load_file(run_copy / "model.safetensors")
    name = next(key for key, value in weights.items() if value.is_floating_point())
    weights[name] = torch.full_like(weights[name], math.nan)
    save_file(weights, run_copy / "model.safetensors")
    one_line_error(run_script("evaluate", "--run", str(run_copy)), "model.safetensors", repr(name), "non-finite")


def test_nan_rows_in_the_feature_cache_stop_evaluation(run_copy, tmp_path):
    """Fifty NaN rows in a copy of the cache (header intact): one line, never a score."""
    config = json.loads((run_copy / "config.json").read_text())
    cache = tmp_path / "cache"
    for backbone in config["features"]["backbones"].values():
        target = cache / backbone["cache_entry"]
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(backbone["cache_file"], target)
    backbone = config["features"]["backbones"]["text"]
    damaged = cache / backbone["cache_entry"]
    with safe_open(damaged, "pt") as handle:
        metadata, states = handle.metadata(), handle.get_tensor("states").clone()
    states[torch.randperm(len(states), generator=torch.Generator().manual_seed(0))[:50]] = math.nan
    save_file({"states": states}, damaged, metadata=metadata)
    one_line_error(
        run_script("evaluate", "--run", str(run_copy), "--cache-dir", str(cache)),
        str(damaged),
        "text states",
        "in 50 row(s)",
    )


def test_a_diverging_loss_is_one_line(toy_root):
    """Weights gone NaN mid-training: the step's loss stops the run with one line, no step taken."""
    from rich.console import Console

    import crossan
    from crossan.zoo.data.readers import read_microlens
    from crossan.zoo.features.store import ItemFeatures
    from crossan.zoo.training.trainer import Trainer

    dataset = read_microlens(toy_root, name="toy")
    model = crossan.create_model("sasrec-id", num_items=dataset.num_items)
    trainer = Trainer(
        model, dataset, ItemFeatures(dataset.num_items), TrainConfig(batch_size=16), console=Console(quiet=True)
    )
    with torch.no_grad():
        next(model.parameters()).fill_(math.nan)
    with pytest.raises(NonFiniteError, match="the training loss is nan at epoch 1, step 1"):
        trainer.train_epoch(1)


def test_states_that_overflow_float16_are_not_cached():
    """A backbone whose states pass float16's range: one line, before any file is written."""
    from types import SimpleNamespace

    from crossan.zoo.features.prepare import extract_states

    huge = SimpleNamespace(
        modality="text",
        output_shape=(2, 3),
        backbone=SimpleNamespace(model=torch.nn.Identity(), identity={"architecture": "bert"}),
        encode_rows=lambda dataset, rows, device: torch.full((len(rows), 2, 3), 1e6),
    )
    with pytest.raises(NonFiniteError, match=r"text states computed by bert \(float16 overflow\?; not cached\)"):
        extract_states(huge, None, range(4))


# --- every file of a run folder gets one line -------------------------------------------------


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


@pytest.mark.parametrize(
    "name, damage, named",
    [
        ("model.safetensors", _truncate, "not a readable safetensors file"),
        ("model.safetensors", lambda p: p.write_bytes(b""), "not a readable safetensors file"),
        ("model.safetensors", lambda p: p.write_bytes(os.urandom(4096)), "not a readable safetensors file"),
        ("config.json", _truncate, "not valid JSON"),
        ("config.json", lambda p: p.write_bytes(b""), "empty, expected JSON"),
        ("config.json", lambda p: p.write_bytes(b"\xff\xfe{}"), "not UTF-8"),
        ("config.json", lambda p: p.write_text("[1, 2]"), "expected a JSON object"),
        ("trainer_state.json", _truncate, "not valid JSON"),
    ],
)
def test_damaged_run_files_are_one_line_naming_the_file(run_copy, name, damage, named):
    """evaluate.py reads them all; --resume reads the JSON files (a finished run's weights are
    not needed to say it finished)."""
    damage(run_copy / name)
    commands = [("evaluate", "--run", str(run_copy))]
    if name.endswith(".json"):
        commands.append(("train", "--resume", str(run_copy)))
    for command in commands:
        one_line_error(run_script(*command), name, named)


def test_weights_that_do_not_fit_the_config_are_one_line(run_copy):
    config = json.loads((run_copy / "config.json").read_text())
    config["model"]["embedding_dim"] = config["model"]["embedding_dim"] * 2
    (run_copy / "config.json").write_text(json.dumps(config))
    one_line_error(run_script("evaluate", "--run", str(run_copy)), "model.safetensors", "do not fit the model")


def test_damaged_checkpoint_is_one_line(run_copy):
    from crossan.zoo.runs.pipeline import code_fingerprint

    config = json.loads((run_copy / "config.json").read_text())
    (run_copy / "config.json").write_text(json.dumps({**config, "code": code_fingerprint()}))  # this code resumes
    state = json.loads((run_copy / "trainer_state.json").read_text())
    (run_copy / "trainer_state.json").write_text(json.dumps({**state, "finished": False}))
    (run_copy / "metrics.json").unlink()
    _truncate(run_copy / state["checkpoint"] / "optimizer.safetensors")
    one_line_error(
        run_script("train", "--resume", str(run_copy)), "optimizer.safetensors", "not a readable safetensors file"
    )
    (run_copy / state["checkpoint"] / "optimizer.json").write_text("{}")
    one_line_error(run_script("train", "--resume", str(run_copy)), "optimizer.json", "missing 'param_groups'")


def test_nan_weights_in_a_checkpoint_stop_the_resume(run_copy):
    from crossan.zoo.runs.pipeline import code_fingerprint

    config = json.loads((run_copy / "config.json").read_text())
    (run_copy / "config.json").write_text(json.dumps({**config, "code": code_fingerprint()}))
    state = json.loads((run_copy / "trainer_state.json").read_text())
    (run_copy / "trainer_state.json").write_text(json.dumps({**state, "finished": False}))
    weights_path = run_copy / state["checkpoint"] / "model.safetensors"
    weights = load_file(weights_path)
    name = next(key for key, value in weights.items() if value.is_floating_point())
    weights[name][0] = math.inf
    save_file(weights, weights_path)
    one_line_error(run_script("train", "--resume", str(run_copy)), str(weights_path), repr(name), "non-finite")


def test_every_user_with_three_interactions_is_one_line(tmp_path, cache_dir):
    """Each user's last two items are held out: nothing is left to train on."""
    root = tmp_path / "amazon"
    root.mkdir()
    (root / "items.tsv").write_text("".join(f"i{n}\ttitle {n}\n" for n in range(6)))
    (root / "users.tsv").write_text(
        "".join(f"u{u}\t{' '.join(f'i{(u + k) % 6}' for k in range(3))}\n" for u in range(20))
    )
    result = run_script(
        "train",
        "--preset",
        "sasrec-id",
        "--data",
        "amazon",
        "--data-root",
        str(root),
        "--cache-dir",
        str(cache_dir),
        "--run-dir",
        str(tmp_path / "r"),
    )
    one_line_error(result, "nothing to train on", "at least 4 interactions")


# --- run folders are portable -----------------------------------------------------------------


@pytest.mark.slow
def test_a_run_evaluates_from_another_directory_and_after_a_move(toy_root, tmp_path, monkeypatch):
    """Trained with relative --cache-dir and --run-dir (the defaults are relative too), the run
    evaluates from another working directory and after its folder moved: the same metrics."""
    workspace, elsewhere = tmp_path / "workspace", tmp_path / "elsewhere"
    workspace.mkdir()
    elsewhere.mkdir()
    monkeypatch.chdir(workspace)
    trained = run_script(
        "train",
        "--preset",
        "crossan-t",
        "--data",
        "microlens",
        "--data-root",
        str(toy_root),
        "--cache-dir",
        "cache",
        "--epochs",
        "1",
        "--run-dir",
        "run",
    )
    assert trained.returncode == 0, trained.stderr
    expected = json.loads(run_script("evaluate", "--run", "run", "--json").stdout)["metrics"]
    moved = shutil.move(workspace / "run", elsewhere / "run")
    monkeypatch.chdir(elsewhere)
    result = run_script("evaluate", "--run", "run", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["metrics"] == expected
    assert Path(json.loads((Path(moved) / "config.json").read_text())["feature_settings"]["cache_dir"]).is_absolute()


def test_a_run_whose_users_changed_does_not_evaluate(run_copy):
    """The catalogue the same, the users' sequences other: the run is not evaluated on them."""
    config = json.loads((run_copy / "config.json").read_text())
    (run_copy / "config.json").write_text(json.dumps({**config, "data": {**config["data"], "sequences": "0" * 16}}))
    one_line_error(run_script("evaluate", "--run", str(run_copy)), "its users' sequences hash")


def test_moved_data_is_found_beside_the_run_or_asked_for(toy_run, toy_root, tmp_path):
    """Data and run moved together (the same relative place): found; data missing: the line
    names every path tried."""
    config = json.loads((toy_run / "config.json").read_text())
    workspace = tmp_path / "workspace"
    run = Path(shutil.copytree(toy_run, workspace / "runs" / "run"))
    relative = Path(config["data"]["root_from_run"])
    moved_config = {**config, "data": {**config["data"], "root": str(tmp_path / "gone")}}
    (run / "config.json").write_text(json.dumps(moved_config))
    one_line_error(run_script("evaluate", "--run", str(run)), str(tmp_path / "gone"), "give --data-root")
    shutil.copytree(toy_root, (run / relative).resolve())
    assert run_script("evaluate", "--run", str(run)).returncode == 0
    assert run_script("evaluate", "--run", str(run), "--data-root", str(toy_root)).returncode == 0


# --- a full disk while caching and training ---------------------------------------------------


def run_with_file_limit(limit_bytes: int, script: str, *args: str) -> subprocess.CompletedProcess:
    """`python <script> <args>` with every file it writes capped at `limit_bytes` (a full disk:
    writes past the cap fail with EFBIG, SIGXFSZ ignored)."""
    code = (
        "import resource, runpy, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit_bytes}, {limit_bytes}))\n"
        f"sys.argv = {[script, *args]!r}\n"
        f"runpy.run_path({script!r}, run_name='__main__')\n"
    )
    return subprocess.run([sys.executable, "-c", code], cwd=PROJECT, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_a_full_disk_while_caching_leaves_no_cache_and_the_rerun_succeeds(toy_root, tmp_path):
    cache, run_dir = tmp_path / "cache", tmp_path / "run"
    command = [
        "--preset",
        "crossan-t",
        "--data",
        "microlens",
        "--data-root",
        str(toy_root),
        "--cache-dir",
        str(cache),
        "--epochs",
        "1",
        "--run-dir",
        str(run_dir),
    ]
    one_line_error(run_with_file_limit(4096, "train.py", *command), "could not be written", "File too large")
    assert not [p for p in cache.rglob("*.safetensors")]  # no cache file, not even a partial one
    assert not run_dir.exists()
    assert run_script("train", *command).returncode == 0


@pytest.mark.slow
def test_a_full_disk_while_checkpointing_keeps_the_run_resumable(toy_root, cache_dir, tmp_path):
    run_dir = tmp_path / "run"
    command = [
        "--preset",
        "sasrec-id",
        "--data",
        "microlens",
        "--data-root",
        str(toy_root),
        "--cache-dir",
        str(cache_dir),
        "--epochs",
        "2",
        "--run-dir",
        str(run_dir),
    ]
    one_line_error(run_with_file_limit(16384, "train.py", *command), "checkpoints/epoch-0001", "File too large")
    assert sorted(p.name for p in run_dir.iterdir()) == ["checkpoints", "config.json"]
    assert not list((run_dir / "checkpoints").iterdir())  # the half-written epoch folder is gone
    resumed = run_script("train", "--resume", str(run_dir))
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((run_dir / "trainer_state.json").read_text())["finished"]


def test_the_tuner_refuses_options_that_change_nothing(tmp_path):
    from crossan.zoo.cli.tune import main as tune_main

    with pytest.raises(ConfigError, match="--cover-dir applies to --data microlens only"):
        tune_main(
            [
                "--preset",
                "crossan-t",
                "--data",
                "amazon",
                "--data-root",
                str(tmp_path),
                "--cover-dir",
                "x",
                "--study",
                str(tmp_path / "study"),
            ]
        )
    assert not (tmp_path / "study").exists()
