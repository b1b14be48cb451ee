"""Transfer across catalogues: a trained run ranks a catalogue it never trained on (zero-shot),
and a new run starts from a finished run's weights (fine-tuning, `--init-from`)."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from rich.console import Console
from scripts import run_main

from crossan.export.cli import main as export_main
from crossan.export.serve import OnnxRecommender
from crossan.zoo.backbones.loading import config_digest
from crossan.zoo.cli.evaluate import main as evaluate_main
from crossan.zoo.cli.train import main as train_main
from crossan.zoo.cli.tune import main as tune_main
from crossan.zoo.core.errors import ConfigError
from crossan.zoo.data import DataError, load_dataset
from crossan.zoo.data.toy import generate_toy
from crossan.zoo.models import build_model, load_model, preset_config
from crossan.zoo.runs.init_from import initialise_from
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


def train(run_dir: Path, data_root: Path, cache_dir: Path, preset: str, *settings: str, options: tuple = ()) -> Path:
    """A one-epoch run of `preset` on the toy-layout data at `data_root`, with `--set` `settings`."""
    result = run_main(
        train_main,
        "--preset",
        preset,
        "--data",
        "microlens",
        "--data-root",
        str(data_root),
        "--cache-dir",
        str(cache_dir),
        "--epochs",
        "1",
        "--run-dir",
        str(run_dir),
        *(option for setting in settings for option in ("--set", setting)),
        *options,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return run_dir


PRIOR = ("score_temperature=0.1", "backbone_prior_weight=0.25", "backbone_prior_cold_scale=1.5")


@pytest.fixture(scope="module")
def prior_run(toy_root: Path, cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """crossan-t with the frozen prior and its cold-item scale: the model reads catalogue rows."""
    return train(tmp_path_factory.mktemp("prior-run") / "run", toy_root, cache_dir, "crossan-t", *PRIOR)


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
    assert result.returncode == 2 and result.stderr.startswith("error: --data names the kind of --catalogue")
    result = run_main(export_main, "--run", str(prior_run), "--catalogue", "C", "--data-root", "D")
    assert result.returncode == 2 and result.stderr.startswith("error: --data-root says where the run's own data")


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


# --- fine-tuning from a pretrained run ------------------------------------------------------------


def test_init_from_takes_every_fitting_tensor_and_leaves_the_rest_fresh(
    prior_run: Path, other_catalogue: Path, cache_dir: Path, tmp_path: Path
) -> None:
    """On another catalogue the side network, heads and user encoder are taken as they are; the
    record of which items occur in training is the new catalogue's; a wider user encoder stays new."""
    config = json.loads((prior_run / "config.json").read_text())
    config["data"]["fingerprint"] = "another catalogue"
    pretrained = load_model(prior_run)
    model = build_model(dataclasses.replace(pretrained.config, num_items=96, ffn_dim=2 * pretrained.config.ffn_dim))
    fresh = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    record = initialise_from(model, prior_run, config, Console(quiet=True))
    weights, now = pretrained.state_dict(), model.state_dict()
    assert record["catalogue_bound"] == ["cold_items.seen"] and record["same_catalogue"] is False
    assert record["new"] == record["shape_differs"] and record["new"]
    assert all("ffn" in name for name in record["new"]) and not record["unused"]
    assert set(record["taken"]) | set(record["new"]) | {"cold_items.seen"} == set(now)
    for name in record["taken"]:
        torch.testing.assert_close(now[name], weights[name], rtol=0, atol=0)
    for name in (*record["new"], "cold_items.seen"):
        torch.testing.assert_close(now[name], fresh[name], rtol=0, atol=0)


def test_init_from_refuses_a_run_of_which_nothing_fits(prior_run: Path) -> None:
    config = json.loads((prior_run / "config.json").read_text())
    model = build_model(preset_config("sasrec-id", embedding_dim=24, ffn_dim=48, num_items=96))
    config = {**config, "preset": "sasrec-id", "data": {"fingerprint": "other"}}
    with pytest.raises(
        ConfigError, match=r"none of its tensors fits sasrec-id \(names or shapes differ from its crossan-t"
    ):
        initialise_from(model, prior_run, config, Console(quiet=True))


def test_init_from_refuses_a_run_over_other_backbones(prior_run: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(prior_run, tmp_path / "copy"))
    config = json.loads((copy / "config.json").read_text())
    config["features"]["backbones"]["text"]["weights_hash"] = "0" * 16
    (copy / "config.json").write_text(json.dumps(config))
    model = load_model(prior_run)
    with pytest.raises(DataError, match="the text backbone loaded now is not the one .* trained over \\(weights_hash"):
        initialise_from(model, copy, json.loads((prior_run / "config.json").read_text()), Console(quiet=True))


def test_train_init_from_fine_tunes_on_another_catalogue_and_records_it(
    prior_run: Path, other_catalogue: Path, tmp_path: Path
) -> None:
    run = train(
        tmp_path / "fine-tuned",
        other_catalogue,
        tmp_path / "cache",
        "crossan-t",
        *PRIOR,
        options=("--init-from", str(prior_run)),
    )
    config = json.loads((run / "config.json").read_text())
    record = config["init_from"]
    assert config["train"]["init_from"] == record["run"] == str(prior_run.resolve())
    assert record["catalogue_bound"] == ["cold_items.seen"] and record["new"] == [] and record["preset"] == "crossan-t"
    assert load_model(run).cold_items.seen.sum() > 0, "the new catalogue's training items are marked"


def test_train_init_from_a_missing_run_stops_before_reading_data(tmp_path: Path) -> None:
    result = run_main(
        train_main,
        "--preset",
        "crossan-t",
        "--data-root",
        str(tmp_path / "none"),
        "--init-from",
        str(tmp_path / "nothing"),
    )
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line == f"error: {tmp_path / 'nothing'}: not a run directory (no config.json)"


@pytest.mark.slow
def test_export_of_a_run_whose_data_moved_takes_data_root(prior_run: Path, toy_root: Path, tmp_path: Path) -> None:
    """As for evaluation: the line names --data-root, and export has it."""
    run = Path(shutil.copytree(prior_run, tmp_path / "run"))
    config = json.loads((run / "config.json").read_text())
    gone = tmp_path / "gone"
    config["data"] = {**config["data"], "root": str(gone), "root_from_run": "../gone"}
    (run / "config.json").write_text(json.dumps(config))
    result = run_main(export_main, "--run", str(run), "--out", str(tmp_path / "export"))
    assert result.returncode == 2 and str(gone) in result.stderr and "give --data-root" in result.stderr
    result = run_main(export_main, "--run", str(run), "--data-root", str(toy_root), "--out", str(tmp_path / "export"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((tmp_path / "export" / "validation.json").read_text())["zero_shot"] is False


@pytest.mark.slow
def test_a_tuner_space_can_choose_to_start_from_a_pretrained_run(
    prior_run: Path, other_catalogue: Path, tmp_path: Path
) -> None:
    """`init_from` is a training setting, so a space may hold it as a categorical choice; the
    trial's run then starts from the pretrained run and records it."""
    space = tmp_path / "space.toml"
    space.write_text(
        "[fixed]\nepochs = 1\nscore_temperature = 0.1\nbackbone_prior_weight = 0.25\n"
        f'backbone_prior_cold_scale = 1.5\n\n[params.init_from]\ntype = "categorical"\nchoices = ["{prior_run}"]\n'
    )
    result = run_main(
        tune_main,
        "--preset",
        "crossan-t",
        "--space",
        str(space),
        "--trials",
        "1",
        "--study",
        str(tmp_path / "study"),
        "--data",
        "microlens",
        "--data-root",
        str(other_catalogue),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--json",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout)
    assert summary["recipe"]["init_from"] == str(prior_run)
    config = json.loads((Path(summary["run_dir"]) / "config.json").read_text())
    assert config["init_from"]["run"] == str(prior_run.resolve()) and config["init_from"]["new"] == []


def test_a_backbone_s_identity_does_not_depend_on_where_it_is_installed() -> None:
    """The same model installed in two environments has one identity (its cache and runs carry over)."""
    config = {"hidden_size": 8, "_name_or_path": "/one/venv/site-packages/model"}
    assert config_digest(config) == config_digest({**config, "_name_or_path": "/another/venv/model"})
    assert config_digest(config) != config_digest({**config, "hidden_size": 16})


def test_a_run_recorded_before_the_config_digest_still_transfers(
    prior_run: Path, other_catalogue: Path, tmp_path: Path
) -> None:
    """Runs of earlier versions recorded a configuration hash that held the install path; the
    keys the two records share are compared, the weights' hash among them."""
    run = Path(shutil.copytree(prior_run, tmp_path / "run"))
    config = json.loads((run / "config.json").read_text())
    backbone = config["features"]["backbones"]["text"]
    backbone["config_hash"] = backbone.pop("config_digest")[::-1]
    (run / "config.json").write_text(json.dumps(config))
    args = ("--data", "microlens", "--data-root", str(other_catalogue), "--cache-dir", str(tmp_path / "cache"))
    assert evaluate("--run", str(run), *args)["zero_shot"] is True
    backbone["weights_hash"] = "0" * 16
    (run / "config.json").write_text(json.dumps(config))
    result = run_main(evaluate_main, "--run", str(run), *args)
    assert result.returncode == 2 and "(weights_hash:" in result.stderr
