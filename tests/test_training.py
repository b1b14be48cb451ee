"""End to end on the small toy set: training beats popularity, runs repeat exactly, files reload."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console
from scripts import run_script

import crossan
from crossan.zoo.core.errors import ConfigError
from crossan.zoo.data import read_microlens
from crossan.zoo.data.dataset import SequenceDataset
from crossan.zoo.features.settings import FeatureSettings
from crossan.zoo.features.store import ItemFeatures
from crossan.zoo.runs.pipeline import describe_data, train_and_save
from crossan.zoo.runs.run import open_run
from crossan.zoo.training.evaluation import evaluate_history_similarity, evaluate_model, evaluate_popularity
from crossan.zoo.training.significance import cold_item_users
from crossan.zoo.training.trainer import TrainConfig, Trainer, training_windows

QUICK = TrainConfig(epochs=4, patience=4, seed=7)


def train(toy_root: Path, cache_dir: Path, run_dir: Path, preset: str, overrides: dict | None = None) -> dict:
    dataset = read_microlens(toy_root, name="toy")
    _, metrics, _ = train_and_save(
        preset,
        dataset,
        describe_data("toy", dataset),
        FeatureSettings(cache_dir=cache_dir),
        QUICK,
        {"adapter_dim": 64} if overrides is None else overrides,
        run_dir,
        torch.device("cpu"),
        Console(quiet=True),
    )
    return metrics


@pytest.fixture(scope="module")
def crossan_run(toy_root: Path, cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    run_dir = tmp_path_factory.mktemp("runs") / "crossan"
    return run_dir, train(toy_root, cache_dir, run_dir, "crossan-tiva")


def test_crossan_beats_popularity_twofold(crossan_run: tuple[Path, dict]) -> None:
    _, metrics = crossan_run
    assert metrics["test"]["NDCG@10"] >= 2 * metrics["popularity"]["test"]["NDCG@10"]
    assert metrics["valid"]["NDCG@10"] >= 2 * metrics["popularity"]["valid"]["NDCG@10"]


def test_run_directory_holds_every_file(crossan_run: tuple[Path, dict]) -> None:
    run_dir, metrics = crossan_run
    for name in (
        "config.json",
        "model.safetensors",
        "trainer_state.json",
        "metrics.json",
        "per_user_valid.json",
        "per_user_test.json",
        "curves.png",
    ):
        assert (run_dir / name).is_file(), name
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert set(saved["test"]) == {"HR@10", "HR@20", "NDCG@10", "NDCG@20"} and saved["best_epoch"] >= 1
    per_user = json.loads((run_dir / "per_user_test.json").read_text())
    ranks = torch.tensor([float("inf") if r is None else r for r in per_user["ranks"]])
    assert (ranks <= 10).float().mean().item() == pytest.approx(saved["test"]["HR@10"], abs=1e-6)
    assert not list(run_dir.glob(".*.tmp"))
    assert (run_dir / "curves.png").read_bytes().startswith(b"\x89PNG")


def test_reloaded_run_reproduces_its_metrics(crossan_run: tuple[Path, dict]) -> None:
    run_dir, metrics = crossan_run
    run = open_run(run_dir)
    result = evaluate_model(run.model, run.dataset, run.features, "test")
    assert result.metrics == pytest.approx(metrics["test"], abs=1e-6)


def test_returned_run_holds_the_best_epoch_model(toy_root: Path, cache_dir: Path, tmp_path: Path) -> None:
    dataset = read_microlens(toy_root, name="toy")
    outcome, metrics, run = train_and_save(
        "sasrec-id",
        dataset,
        describe_data("toy", dataset),
        FeatureSettings(cache_dir=cache_dir),
        QUICK,
        {},
        tmp_path / "id",
        torch.device("cpu"),
        Console(quiet=True),
    )
    assert run.config == json.loads((tmp_path / "id" / "config.json").read_text())
    assert evaluate_model(run.model, dataset, run.features, "test").metrics == pytest.approx(metrics["test"], abs=1e-6)
    for name, tensor in run.model.state_dict().items():
        assert torch.equal(tensor, outcome.best_state[name]), name


def test_same_seed_gives_identical_metrics(
    crossan_run: tuple[Path, dict], toy_root: Path, cache_dir: Path, tmp_path: Path
) -> None:
    _, first = crossan_run
    second = train(toy_root, cache_dir, tmp_path / "again", "crossan-tiva")
    assert second["test"] == first["test"] and second["valid"] == first["valid"]
    assert second["best_epoch"] == first["best_epoch"]


def test_evaluation_ranks_by_the_models_scores(toy_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A model whose scores ignore the user and are the training counts ranks like the popularity baseline."""
    dataset = read_microlens(toy_root, name="toy")
    model = crossan.create_model("sasrec-id", num_items=dataset.num_items)
    counts = torch.as_tensor(dataset.train_counts()[1:], dtype=torch.float32)
    monkeypatch.setattr(model, "scores", lambda users, items: counts.expand(len(users), -1))
    for split in ("valid", "test"):
        result = evaluate_model(model, dataset, ItemFeatures(dataset.num_items), split)
        popularity = evaluate_popularity(dataset, split)
        assert torch.equal(result.ranks, popularity.ranks) and result.metrics == popularity.metrics


def test_a_prior_without_its_learned_part_ranks_like_the_history_similarity_baseline(toy_root: Path) -> None:
    """With the learned item embeddings zeroed, a side network's score is its frozen prior alone,
    so its ranks are the untrained history-similarity baseline's over the same embeddings."""
    dataset = read_microlens(toy_root, name="toy")
    states = torch.randn(dataset.num_items, 3, 16, generator=torch.Generator().manual_seed(0))
    config = crossan.preset_config(
        "crossan-t", score_temperature=0.1, backbone_prior_weight=2.0, backbone_prior_decay=0.6, adapter_dim=8
    ).fit_to_data(dataset.num_items, {"text": (3, 16)})
    model = crossan.build_model(config).eval()
    with torch.no_grad():
        for parameter in model.heads.parameters():
            parameter.zero_()
    features = ItemFeatures(dataset.num_items, {"text": states})
    for split in ("valid", "test"):
        prior_only = evaluate_model(model, dataset, features, split)
        baseline = evaluate_history_similarity(dataset, states[:, -1], split, 0.6, config.max_seq_len)
        assert (prior_only.ranks == baseline.ranks).float().mean() >= 0.999
        for name, value in baseline.metrics.items():
            assert abs(prior_only.metrics[name] - value) < 1e-3


def test_id_baseline_trains(toy_root: Path, cache_dir: Path, tmp_path: Path) -> None:
    metrics = train(toy_root, cache_dir, tmp_path / "id", "sasrec-id", overrides={})
    model = crossan.create_model("sasrec-id", num_items=128)
    assert metrics["trainable_parameters"] == sum(p.numel() for p in model.parameters())
    assert metrics["test"]["NDCG@10"] > metrics["popularity"]["test"]["NDCG@10"]


def test_evaluate_cli_prints_json(crossan_run: tuple[Path, dict]) -> None:
    run_dir, metrics = crossan_run
    result = run_script("evaluate", "--run", str(run_dir), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["metrics"] == pytest.approx(metrics["test"], abs=1e-6)


def test_evaluate_cli_analyses_towers_and_gates(crossan_run: tuple[Path, dict], tmp_path: Path) -> None:
    run_dir, _ = crossan_run
    heatmap = tmp_path / "gates.png"
    result = run_script(
        "evaluate",
        "--run",
        str(run_dir),
        "--mutual-information",
        "--mi-components",
        "4",
        "--gate-heatmap",
        str(heatmap),
        "--json",
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    information = report["mutual_information"]
    assert information["estimator"]["estimator"].startswith("Kraskov-Stoegbauer-Grassberger")
    assert information["estimator"]["pca_components"] == 4 and information["items"] == 128
    assert [(p["first"], p["second"]) for p in information["pairs"]] == [
        ("text", "image"),
        ("text", "video"),
        ("text", "audio"),
        ("image", "video"),
        ("image", "audio"),
        ("video", "audio"),
    ]
    assert information["mean"] == pytest.approx(np.mean([p["mutual_information"] for p in information["pairs"]]))
    gates = report["gate_heatmap"]
    assert [t["tower"] for t in gates["towers"]] == ["text", "image", "video", "audio"]
    assert heatmap.read_bytes().startswith(b"\x89PNG") and gates["path"] == str(heatmap)


def test_evaluate_cli_refuses_analyses_a_model_cannot_give(toy_root: Path, cache_dir: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "id"
    train(toy_root, cache_dir, run_dir, "sasrec-id", overrides={})
    for option in (["--mutual-information"], ["--gate-heatmap", str(tmp_path / "g.png")]):
        result = run_script("evaluate", "--run", str(run_dir), *option)
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert "sasrec-id has" in result.stderr


def _dataset_of(prefix_lengths: list[int]) -> SequenceDataset:
    """Users whose training prefixes have the given lengths, every item distinct."""
    sequences, next_item = [], 1
    for length in prefix_lengths:
        sequences.append(np.arange(next_item, next_item + length + 2))  # + valid and test items
        next_item += length + 2
    return SequenceDataset.from_sequences(
        name="windows",
        root=Path("."),
        item_ids=[str(i) for i in range(1, next_item)],
        user_ids=[f"u{u}" for u in range(len(sequences))],
        sequences=sequences,
    )


@pytest.mark.parametrize("length", [3, 5, 11])
def test_sliding_windows_predict_every_training_item_once(length: int) -> None:
    dataset = _dataset_of([1, 2, 4, 5, 9, 23, 30])
    windows, users = training_windows(dataset, length, sliding=True)
    targets: dict[int, list[int]] = {}
    for window, user in zip(windows.tolist(), users.tolist(), strict=True):
        items = [i for i in window if i]
        assert items == window[len(window) - len(items) :], "windows are left-padded"
        assert len(items) >= 2
        targets.setdefault(user, []).extend(items[1:])
    for user in range(dataset.num_users):
        prefix = dataset.history(user, "train").tolist()
        assert sorted(targets.get(user, [])) == prefix[1:]


def test_default_windows_are_one_per_user_and_keep_the_newest_items() -> None:
    dataset = _dataset_of([1, 2, 4, 30])
    windows, users = training_windows(dataset, 5)
    assert users.tolist() == [1, 2, 3]
    assert windows[2].tolist() == dataset.history(3, "train")[-5:].tolist()
    assert windows[0].tolist() == [0, 0, 0, *dataset.history(1, "train").tolist()]


def test_trainer_groups_a_users_windows_only_when_sliding(toy_root: Path) -> None:
    dataset = read_microlens(toy_root, name="toy")
    features = ItemFeatures(dataset.num_items)
    model = crossan.create_model(
        "sasrec-id", num_items=dataset.num_items, max_seq_len=3, dropout=0.0, attention_dropout=0.0
    )
    plain = Trainer(model, dataset, features, TrainConfig(), console=Console(quiet=True))
    assert plain.window_users is None and len(plain.windows) == dataset.num_users
    sliding = Trainer(model, dataset, features, TrainConfig(sliding_windows=True), console=Console(quiet=True))
    windows, users = training_windows(dataset, 4, sliding=True)
    assert torch.equal(sliding.windows, windows) and torch.equal(sliding.window_users, users)
    batch = slice(0, 16)  # windows are in user order: this batch holds several windows per user
    assert len(set(users[batch].tolist())) < 16
    with torch.no_grad():
        grouped = sliding.loss(sliding.windows[batch], sliding.window_users[batch])
        separate = sliding.loss(sliding.windows[batch])
    assert grouped < separate  # masking the user's other items removes negatives


def test_steps_per_epoch_takes_the_first_batches_of_each_shuffle(toy_root: Path) -> None:
    dataset = read_microlens(toy_root, name="toy")
    model = crossan.create_model("sasrec-id", num_items=dataset.num_items)
    config = TrainConfig(epochs=2, patience=2, batch_size=16, steps_per_epoch=3)
    trainer = Trainer(model, dataset, ItemFeatures(dataset.num_items), config, console=Console(quiet=True))
    full = Trainer(
        model, dataset, ItemFeatures(dataset.num_items), TrainConfig(batch_size=16), console=Console(quiet=True)
    )
    for epoch in (1, 2):
        budget, every = trainer._epoch_batches(epoch), full._epoch_batches(epoch)
        assert len(every) == -(-dataset.num_users // 16) and len(budget) == 3
        assert all(torch.equal(a, b) for a, b in zip(budget, every[: len(budget)], strict=True))
    trainer.fit()
    steps = {int(state["step"]) for state in trainer.optimizer.state.values()}
    assert steps == {6}
    with pytest.raises(ConfigError, match="steps_per_epoch"):
        TrainConfig(steps_per_epoch=-1)


def test_prior_inference_weight_auto_is_chosen_on_validation_and_recorded(
    toy_root: Path, cache_dir: Path, tmp_path: Path
) -> None:
    """`backbone_prior_inference_weight=auto` tries each grid weight on the validation split at
    the best epoch, keeps the best, reports validation at it, and saves it as the run's config."""
    grid = (0.0, 1.0, 3.0)
    overrides = {
        "adapter_dim": 16,
        "score_temperature": 0.1,
        "backbone_prior_weight": 0.25,
        "backbone_prior_inference_weight": "auto",
        "backbone_prior_inference_grid": grid,
    }
    metrics = train(toy_root, cache_dir, tmp_path / "auto", "crossan-t", overrides)
    chosen = metrics["chosen_on_validation"]["backbone_prior_inference_weight"]
    scores = {entry["value"]: entry["NDCG@10"] for entry in chosen["valid"]}
    assert list(scores) == list(grid)
    assert chosen["chosen"] == max(grid, key=lambda weight: (scores[weight], -grid.index(weight)))
    assert metrics["valid"]["NDCG@10"] == pytest.approx(scores[chosen["chosen"]], abs=1e-9)
    assert len(set(scores.values())) > 1, "the weight must move validation, or the choice means nothing"
    saved = json.loads((tmp_path / "auto" / "config.json").read_text())["model"]
    assert saved["backbone_prior_inference_weight"] == chosen["chosen"]
    reopened = open_run(tmp_path / "auto")
    assert reopened.model.prior_inference_weight == chosen["chosen"]
    result = evaluate_model(reopened.model, reopened.dataset, reopened.features, "test")
    assert result.metrics == pytest.approx(metrics["test"], abs=1e-6)


def test_cold_scale_auto_is_chosen_by_the_stated_rule_and_survives_reopening(
    toy_root: Path, cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`backbone_prior_cold_scale=auto` scores each grid multiple on validation, picks it by
    `pick_on_validation` (recorded with the cold users' score), and the reopened run ranks with it
    and with the training items it was trained on. The toy set has no cold item: every fifth item
    is reported as never trained on."""
    real_counts = SequenceDataset.train_counts

    def fewer_counts(self: SequenceDataset) -> np.ndarray:
        counts = real_counts(self)
        counts[::5] = 0
        return counts

    monkeypatch.setattr(SequenceDataset, "train_counts", fewer_counts)
    dataset = read_microlens(toy_root, name="toy")
    grid = (1.0, 4.0, 16.0)
    overrides = {
        "adapter_dim": 16,
        "score_temperature": 0.1,
        "backbone_prior_weight": 0.25,
        "backbone_prior_inference_weight": 1.0,
        "backbone_prior_cold_scale": "auto",
        "backbone_prior_cold_grid": grid,
    }
    metrics = train(toy_root, cache_dir, tmp_path / "cold", "crossan-t", overrides)
    chosen = metrics["chosen_on_validation"]["backbone_prior_cold_scale"]
    entries = {entry["value"]: entry for entry in chosen["valid"]}
    assert list(entries) == list(grid)
    cold = cold_item_users(dataset, "valid")
    assert 0 < int(cold.sum()) < dataset.num_users
    best = max(grid, key=lambda value: (entries[value]["NDCG@10"], -grid.index(value)))
    close = [v for v in grid if entries[v]["NDCG@10"] >= entries[best]["NDCG@10"] - entries[best]["standard_error"]]
    assert chosen["chosen"] == max(close, key=lambda v: (entries[v]["cold users NDCG@10"], -grid.index(v)))
    colds = [entries[v]["cold users NDCG@10"] for v in grid]
    assert len(set(colds)) > 1, "the multiple must move the cold users' score, or the choice means nothing"
    reopened = open_run(tmp_path / "cold")
    assert reopened.model.prior_cold_scale == chosen["chosen"]
    assert torch.equal(reopened.model.cold_items.seen, torch.from_numpy(dataset.train_counts()[1:] > 0))
    result = evaluate_model(reopened.model, reopened.dataset, reopened.features, "test")
    assert result.metrics == pytest.approx(metrics["test"], abs=1e-6)


def test_prior_inference_weight_refuses_other_words() -> None:
    with pytest.raises(ConfigError, match="must be a number, null or 'auto', got 'best'"):
        crossan.create_model("crossan-t", score_temperature=0.1, backbone_prior_inference_weight="best")


def test_weight_decay_shrinks_matrices_and_spares_biases_and_norms(toy_root: Path) -> None:
    """One AdamW step with no gradient signal: decayed parameters shrink by exactly lr x decay,
    1-d parameters (biases, norm scales) stay; with no decay the step is Adam's."""
    dataset = read_microlens(toy_root, name="toy")
    model = crossan.create_model("sasrec-id", num_items=dataset.num_items)
    trainer = Trainer(
        model,
        dataset,
        ItemFeatures(dataset.num_items),
        TrainConfig(lr=0.01, weight_decay=0.1),
        console=Console(quiet=True),
    )
    groups = {group["name"]: group for group in trainer.optimizer.param_groups}
    assert groups["rest"]["weight_decay"] == 0.1 and groups["rest (no decay)"]["weight_decay"] == 0.0
    assert all(p.dim() > 1 for p in groups["rest"]["params"])
    assert all(p.dim() == 1 for p in groups["rest (no decay)"]["params"])
    assert len(groups["rest"]["params"]) + len(groups["rest (no decay)"]["params"]) == len(list(model.parameters()))
    before = [p.detach().clone() for p in model.parameters()]
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    trainer.optimizer.step()
    for old, new in zip(before, model.parameters(), strict=True):
        expected = old * (1 - 0.01 * 0.1) if old.dim() > 1 else old
        torch.testing.assert_close(new.detach(), expected, rtol=0, atol=1e-7)
    with pytest.raises(ConfigError, match="weight_decay"):
        TrainConfig(weight_decay=1.5)


def test_valid_users_validates_a_fixed_sample_and_tests_everyone(
    toy_root: Path, cache_dir: Path, tmp_path: Path
) -> None:
    dataset = read_microlens(toy_root, name="toy")
    config = TrainConfig(epochs=2, patience=2, seed=7, valid_users=40)
    console = Console(record=True, width=200)
    outcome, metrics, _ = train_and_save(
        "sasrec-id",
        dataset,
        describe_data("toy", dataset),
        FeatureSettings(cache_dir=cache_dir),
        config,
        {},
        tmp_path / "run",
        torch.device("cpu"),
        console,
    )
    assert json.loads((tmp_path / "run" / "config.json").read_text())["train"]["valid_users"] == 40
    valid = json.loads((tmp_path / "run" / "per_user_valid.json").read_text())
    test = json.loads((tmp_path / "run" / "per_user_test.json").read_text())
    assert len(test["ranks"]) == dataset.num_users and len(valid["ranks"]) == 40
    assert len(set(valid["user_ids"])) == 40 and set(valid["user_ids"]) <= set(dataset.user_ids)
    history = outcome.history
    assert all(0 < epoch["valid_standard_error"]["NDCG@10"] < 0.2 for epoch in history)
    printed = console.export_text()
    assert "± " in printed and "(40 users)" in printed
    assert metrics["valid"]["NDCG@10"] == pytest.approx(outcome.valid.metrics["NDCG@10"])
