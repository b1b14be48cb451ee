"""One model trained on several catalogues at once: the combined data set, batches that keep to
one catalogue, rankings within each catalogue, the run folder, and what reads it back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console
from scripts import run_main

from crossan.export.cli import main as export_main
from crossan.zoo.cli.evaluate import main as evaluate_main
from crossan.zoo.cli.train import main as train_main
from crossan.zoo.cli.tune import main as tune_main
from crossan.zoo.core.distributed import SINGLE, Processes
from crossan.zoo.core.errors import ConfigError
from crossan.zoo.data import load_dataset
from crossan.zoo.data.catalogues import catalogue_parts, combine_catalogues
from crossan.zoo.data.toy import generate_toy
from crossan.zoo.features.settings import FeatureSettings
from crossan.zoo.runs.pipeline import describe_data, resume_run, train_and_save
from crossan.zoo.runs.run import catalogue_of_run, open_run
from crossan.zoo.training.evaluation import evaluate_model, evaluate_popularity
from crossan.zoo.training.metrics import metrics_from_ranks
from crossan.zoo.training.trainer import TrainConfig, catalogue_batches, training_windows


class Pruned(Exception):
    """Stands for a kill after the first epoch's checkpoint."""


@pytest.fixture(scope="module")
def catalogues(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three toy catalogues of other sizes and seeds (all named `toy`, as the toy layout names them)."""
    base = tmp_path_factory.mktemp("catalogues")
    return [
        generate_toy(base / name / "toy", seed=seed, num_items=items, num_users=users)
        for name, seed, items, users in (("a", 3, 80, 200), ("b", 4, 96, 300), ("c", 5, 70, 250))
    ]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("multi-cache")


def read(root: Path, cache: Path):  # noqa: ANN201  # a SequenceDataset
    return load_dataset("microlens", root, cache)


def train(run_dir: Path, roots: list[Path], cache: Path, *options: str, preset: str = "crossan-t"):  # noqa: ANN201
    return run_main(
        train_main,
        "--preset",
        preset,
        "--data",
        "microlens",
        *(option for root in roots for option in ("--data-root", str(root))),
        "--cache-dir",
        str(cache),
        "--epochs",
        "2",
        "--run-dir",
        str(run_dir),
        *options,
    )


@pytest.fixture(scope="module")
def two_catalogue_run(catalogues: list[Path], cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """crossan-t with the frozen prior and its cold-item scale, two epochs over catalogues a and b together."""
    run_dir = tmp_path_factory.mktemp("multi-run") / "run"
    result = train(
        run_dir,
        catalogues[:2],
        cache,
        "--set",
        "backbone_prior_weight=0.25",
        "--set",
        "score_temperature=0.1",
        *("--set", "backbone_prior_cold_scale=1.5"),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return run_dir


def test_combined_catalogues_lay_items_and_users_end_to_end(catalogues: list[Path], cache: Path) -> None:
    first, second = read(catalogues[0], cache), read(catalogues[1], cache)
    combined = combine_catalogues([first, second])
    parts = catalogue_parts(combined)
    assert [part.label for part in parts] == ["toy-1", "toy-2"]
    assert (combined.num_items, combined.num_users) == (80 + 96, 200 + 300)
    assert (parts[1].first_item, parts[1].first_user) == (80, 200)
    # The same item of the second catalogue, by its combined index, and its labelled id.
    np.testing.assert_array_equal(combined.sequence(200 + 7), second.sequence(7) + 80)
    assert combined.item_ids[80 + 4] == f"toy-2/{second.item_ids[4]}"
    assert combined.user_ids[0] == f"toy-1/{first.user_ids[0]}"
    assert combined.titles is not None and combined.titles[80:] == second.titles
    np.testing.assert_array_equal(combined.train_counts()[81:], second.train_counts()[1:])
    assert catalogue_parts(first)[0].dataset is first and combine_catalogues([first]) is first
    with pytest.raises(ConfigError, match="given twice"):
        combine_catalogues([first, read(catalogues[0], cache)])


def test_every_batch_holds_one_catalogue_and_processes_share_the_single_process_batches(
    catalogues: list[Path], cache: Path
) -> None:
    combined = combine_catalogues([read(root, cache) for root in catalogues])
    _, users = training_windows(combined, 11, sliding=True)
    catalogue = np.repeat([0, 1, 2], [200, 300, 250])[users.numpy()]
    batches = catalogue_batches(catalogue, 32, epoch=3, seed=7)
    assert all(len(set(catalogue[batch.numpy()])) == 1 for batch in batches)
    assert sorted(torch.cat(batches).tolist()) == list(range(len(users))), "each window once an epoch"
    assert len(batches) == sum(-(-int((catalogue == c).sum()) // 32) for c in range(3))
    assert [b.tolist() for b in catalogue_batches(catalogue, 32, 4, 7)] != [b.tolist() for b in batches]
    # Two processes take the positions of each global batch that are theirs: together, the same batches.
    shares = [catalogue_batches(catalogue, 32, 3, 7, Processes(rank, 2)) for rank in range(2)]
    for step, batch in enumerate(batches):
        assert sorted(torch.cat([shares[0][step], shares[1][step]]).tolist()) == sorted(batch.tolist())


def test_the_run_ranks_each_catalogue_among_its_own_items(
    two_catalogue_run: Path, catalogues: list[Path], cache: Path
) -> None:
    """Validation, test and popularity rank each user among the items of their catalogue; the
    run's metrics are the catalogues' mean, each catalogue's beside them, and are what the
    run narrowed to one catalogue scores on that catalogue alone."""
    metrics = json.loads((two_catalogue_run / "metrics.json").read_text())
    run = open_run(two_catalogue_run)
    assert sorted(metrics["catalogues"]) == ["toy-1", "toy-2"]
    for split in ("valid", "test"):
        each = [metrics["catalogues"][label][split]["NDCG@10"] for label in ("toy-1", "toy-2")]
        assert metrics[split]["NDCG@10"] == pytest.approx(np.mean(each))
    test = evaluate_model(run.model, run.dataset, run.features, "test")
    assert test.metrics == pytest.approx(metrics["test"])
    for index, root in enumerate(catalogues[:2]):
        narrowed = catalogue_of_run(run, index)
        alone = evaluate_model(narrowed.model, narrowed.dataset, narrowed.features, "test")
        label = f"toy-{index + 1}"
        assert alone.metrics == pytest.approx(metrics["catalogues"][label]["test"])
        assert narrowed.dataset.fingerprint() == read(root, cache).fingerprint()
        assert alone.ranks[alone.ranks.isfinite()].max() <= narrowed.dataset.num_items, (
            "ranked among the catalogue's items"
        )
        popularity = evaluate_popularity(narrowed.dataset, "test")
        assert popularity.metrics == pytest.approx(metrics["catalogues"][label]["popularity"]["test"])
        # Which items occur in training: the catalogue's own rows of the run's record.
        part = run.dataset.parts[index]
        assert torch.equal(narrowed.model.cold_items.seen, run.model.cold_items.seen[part.item_rows])
    split_ranks = torch.split(test.ranks, [200, 300])
    assert [metrics_from_ranks(r)["NDCG@10"] for r in split_ranks] == pytest.approx(
        [metrics["catalogues"][label]["test"]["NDCG@10"] for label in ("toy-1", "toy-2")]
    )


def test_the_run_folder_records_every_catalogue(two_catalogue_run: Path, catalogues: list[Path], cache: Path) -> None:
    config = json.loads((two_catalogue_run / "config.json").read_text())
    recorded = config["data"]["catalogues"]
    assert [entry["fingerprint"] for entry in recorded] == [read(root, cache).fingerprint() for root in catalogues[:2]]
    assert [entry["root"] for entry in recorded] == [str(root.resolve()) for root in catalogues[:2]]
    files = config["features"]["backbones"]["text"]["parts"]
    assert [entry["catalogue"] for entry in files] == ["toy-1", "toy-2"]
    assert all(Path(entry["cache_file"]).is_file() for entry in files)
    history = json.loads((two_catalogue_run / "trainer_state.json").read_text())["history"]
    assert sorted(history[0]["valid_catalogues"]) == ["toy-1", "toy-2"]


def test_evaluate_ranks_a_trained_catalogue_as_trained_and_a_new_one_zero_shot(
    two_catalogue_run: Path, catalogues: list[Path], cache: Path
) -> None:
    metrics = json.loads((two_catalogue_run / "metrics.json").read_text())

    def evaluate(root: Path) -> dict:
        result = run_main(
            evaluate_main,
            *("--run", str(two_catalogue_run), "--data", "microlens", "--data-root", str(root)),
            *("--cache-dir", str(cache), "--json"),
        )
        assert result.returncode == 0, result.stderr[-2000:]
        return json.loads(result.stdout)

    trained = evaluate(catalogues[1])
    assert trained["zero_shot"] is False and trained["num_users"] == 300
    assert trained["metrics"] == pytest.approx(metrics["catalogues"]["toy-2"]["test"])
    new = evaluate(catalogues[2])
    assert new["zero_shot"] is True and new["num_users"] == 250 and new["trained_on"] == "toy-1+toy-2"
    whole = run_main(evaluate_main, "--run", str(two_catalogue_run), "--json")
    report = json.loads(whole.stdout)
    assert report["metrics"] == pytest.approx(metrics["test"])
    assert report["catalogues"]["toy-1"] == pytest.approx(metrics["catalogues"]["toy-1"]["test"])


def test_what_would_mix_catalogues_is_refused_in_one_line(
    two_catalogue_run: Path, catalogues: list[Path], cache: Path, tmp_path: Path
) -> None:
    id_model = train(tmp_path / "id", catalogues[:2], cache, preset="sasrec-id")
    assert id_model.returncode != 0 and "learns a vector per item" in id_model.stderr
    assert not (tmp_path / "id").exists(), "a refused run leaves no folder"
    memory = train(tmp_path / "memory", catalogues[:2], cache, "--set", "memory_size=64")
    assert memory.returncode != 0 and "memory_size" in memory.stderr
    assert "Traceback" not in id_model.stderr + memory.stderr
    export = run_main(export_main, "--run", str(two_catalogue_run), "--out", str(tmp_path / "export"))
    assert export.returncode != 0 and "--catalogue" in export.stderr
    moved = run_main(evaluate_main, "--run", str(two_catalogue_run), "--data-root", str(catalogues[0]), "--json")
    assert moved.returncode != 0 and "catalogues" in moved.stderr


def test_a_killed_run_over_two_catalogues_resumes_to_the_uninterrupted_result(
    catalogues: list[Path], cache: Path, tmp_path: Path
) -> None:
    combined = combine_catalogues([read(root, cache) for root in catalogues[:2]])
    description = describe_data("microlens", combined)
    settings = FeatureSettings(cache_dir=cache)
    config = TrainConfig(epochs=2, seed=3)
    quiet, cpu = Console(quiet=True), torch.device("cpu")

    def stop(epoch: int, score: float) -> None:
        raise Pruned

    whole = train_and_save("crossan-t", combined, description, settings, config, {}, tmp_path / "whole", cpu, quiet)
    with pytest.raises(Pruned):
        train_and_save(
            "crossan-t", combined, description, settings, config, {}, tmp_path / "cut", cpu, quiet, SINGLE, stop
        )
    _, resumed, _ = resume_run(tmp_path / "cut", torch.device("cpu"), quiet)
    assert resumed["test"] == pytest.approx(whole[1]["test"])
    for label in ("toy-1", "toy-2"):
        assert resumed["catalogues"][label]["test"] == pytest.approx(whole[1]["catalogues"][label]["test"])


@pytest.mark.slow  # a study's trial over two catalogues: half a minute
def test_the_tuner_trains_on_several_catalogues_and_refuses_a_space_that_would_mix_them(
    catalogues: list[Path], cache: Path, tmp_path: Path
) -> None:
    roots = [option for root in catalogues[:2] for option in ("--data-root", str(root))]
    common = ("--preset", "crossan-t", "--data", "microlens", *roots, "--cache-dir", str(cache), "--trials", "1")
    mixing = run_main(tune_main, *common, "--study", str(tmp_path / "mixing"))
    assert mixing.returncode != 0 and "can choose sampled_negatives=256" in mixing.stderr
    assert not (tmp_path / "mixing" / "trials").exists(), "refused before any trial"
    pinned = ("--set", "sampled_negatives=0", "--set", "item_id_term=false", "--set", "epochs=1")
    result = run_main(tune_main, *common, *pinned, "--study", str(tmp_path / "study"), "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    run_dir = Path(json.loads(result.stdout)["run_dir"])
    config = json.loads((run_dir / "config.json").read_text())
    assert [entry["root"] for entry in config["data"]["catalogues"]] == [str(root.resolve()) for root in catalogues[:2]]
    assert "catalogues" in json.loads((run_dir / "metrics.json").read_text())
