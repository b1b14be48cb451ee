"""Tests for export/: every preset exports to ONNX and TorchScript and matches PyTorch, tampered
exports raise their specific errors, and a toy-trained run goes through `python -m crossan.export`,
the serving helper and the README example.

Tolerance: max abs error <= 1e-4 in float32 (`crossan.export.spec.TOLERANCE`) at batch sizes 1, 3, 17
and lengths 1, 4, 10, none of which is an export shape.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from crossan.export.errors import NameMismatchError, RecommendationMismatchError, ShapeMismatchError, ValueMismatchError
from crossan.export.exporter import ExportedModel, export_model, validate_grid
from crossan.export.item_table import TABLE_FILE, load_item_table
from crossan.export.onnx_export import export_onnx
from crossan.export.ranking import history_window, top_k_rows
from crossan.export.serve import OnnxRecommender, UnknownItemError
from crossan.export.spec import TOLERANCE, item_encoder_spec
from crossan.export.validation import OnnxEncoder, check_agreement, item_cases, user_cases, validate_encoder
from crossan.export.wrappers import ItemEncoder
from crossan.zoo.models import build_model, list_models, preset_config
from crossan.zoo.models.config import StoredFeatures
from crossan.zoo.models.recommender import Recommender
from crossan.zoo.runs.run import open_run

REPO = Path(__file__).resolve().parents[1]
NUM_ITEMS = 50
# Small enough to export quickly, big enough to keep every code path: two side layers (so towers
# read each other's previous outputs) over 16-wide features, MOMEF with k < M, one SASRec block
# with two heads.
NUM_STATES = 2
WIDTH = 16
USER_ENCODER = {"num_blocks": 1, "ffn_dim": 32}


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """The tensors here are tiny; with two intra-op threads on two shared cores, every op can
    wait a scheduler slice for a descheduled worker (seen: 500x slower eager runs)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_model(name: str) -> Recommender:
    """Preset `name` fitted to `NUM_ITEMS` items with tiny features, fixed random weights."""
    config = preset_config(name, **USER_ENCODER)
    shapes = {m: (NUM_STATES, WIDTH) for m in config.backbone_modalities()}
    config = config.fit_to_data(NUM_ITEMS, shapes)
    if shapes:  # a side network: small adapters keep the export fast
        config = dataclasses.replace(config, adapter_dim=8)
    torch.manual_seed(0)
    return build_model(config).eval()


def random_item_inputs(model: Recommender, batch: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """The inputs of `batch` made-up items, the same for the same seed."""
    return model.random_item_inputs(batch, torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def exported_presets(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], tuple[Recommender, ExportedModel]]:
    """`get(name)`: the tiny preset and its exported files, exported on first use (about 5 s)."""
    cache: dict[str, tuple[Recommender, ExportedModel]] = {}

    def get(name: str) -> tuple[Recommender, ExportedModel]:
        if name not in cache:
            model = tiny_model(name)
            cache[name] = model, export_model(model, tmp_path_factory.mktemp(name))
        return cache[name]

    return get


def grid_cases(model: Recommender) -> tuple[list, list]:
    items = item_cases(lambda batch: random_item_inputs(model, batch, seed=batch))
    users = user_cases(torch.randn(NUM_ITEMS, model.item_embedding_width), model.config.max_seq_len)
    return items, users


# The uncached baselines (BERT-base and ViT-base by default) export in tests/test_end_to_end.py,
# over tiny backbones.
# Presets that only drop modalities from another preset's architecture and fusion, turn the
# cross-modal mixing off (indsan: another constant mask in the same mixer), or swap in a fusion
# layer that tests/test_layer_portability.py exports on its own, take no new export path: they
# run in the slow set.
NO_NEW_EXPORT_PATH = {
    "crossan-tia",
    "crossan-tiv",
    "crossan-ti",
    "indsan-ti",
    "indsan-tiva",
    "iisan-ti",
    "crossan-tiva-concat",
    "crossan-tiva-sgated",
    "crossan-tiva-dgated",
}


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=pytest.mark.slow) if n in NO_NEW_EXPORT_PATH else n
        for n in list_models()
        if preset_config(n).stored_features is StoredFeatures.STATES
    ],
)
def test_every_preset_exports_and_validates(name: str, exported_presets) -> None:
    model, exported = exported_presets(name)
    assert all(path.is_file() for path in exported.files())
    assert exported.item_spec.input_names == model.item_input_names
    results = validate_grid(model, exported, *grid_cases(model))
    checked = {(r.encoder, r.runtime) for r in results}
    assert {
        (encoder, runtime)
        for encoder in ("item_encoder", "user_encoder")
        for runtime in ("onnxruntime CPU", "torchscript")
    } <= checked
    for result in results:
        expected = (
            ["B=1", "B=3", "B=17"]
            if result.encoder == "item_encoder"
            else [f"B={b} T={t}" for t in (1, 4, 10) for b in (1, 3, 17)]
        )
        assert list(result.errors) == expected
        assert result.max_abs_error <= TOLERANCE


def test_momef_top_k_routing_survives_export(exported_presets) -> None:
    """Items routed to different expert pairs get PyTorch's outputs from ONNX, and those
    outputs are not what dense (all-expert) routing would give."""
    model, exported = exported_presets("crossan-tiva")
    inputs = random_item_inputs(model, 64, seed=7)
    with torch.no_grad():
        weights = model.fusion.routing_weights(model.tower_embeddings(*inputs))
        expected = model.encode_items(*inputs)
        dense = copy.deepcopy(model)
        dense.fusion.top_k = len(model.config.modalities)
        dense_output = dense.encode_items(*inputs)
    kept = weights > 0
    assert (kept.sum(dim=1) == model.config.top_k).all()
    assert len({tuple(row.tolist()) for row in kept}) >= 3, "routing should differ between items"
    (actual,) = OnnxEncoder(exported.out_dir / "item_encoder.onnx", exported.item_spec)(*inputs)
    assert np.abs(actual - expected.numpy()).max() <= TOLERANCE
    assert np.abs(actual - dense_output.numpy()).max() > 100 * TOLERANCE


def test_backbone_prior_model_exports_and_validates(tmp_path: Path) -> None:
    """The prior widens both encoders (frozen embeddings after the learned ones, a pooled history
    after the user vector); both export and match PyTorch over the validation grid, and the
    user encoder weighs the pooled history with the inference weight, not the training one.
    The prior needs cosine scores, whose normalisation is part of the exported item encoder, so
    the served item table holds the unit embeddings that training scored."""
    model = tiny_model("crossan-ti")
    model = type(model)(
        dataclasses.replace(
            model.config, score_temperature=0.1, backbone_prior_weight=0.5, backbone_prior_inference_weight=1.5
        )
    ).eval()
    exported = export_model(model, tmp_path)
    items, users = grid_cases(model)
    results = validate_grid(model, exported, items, users)
    assert {r.encoder for r in results} == {"item_encoder", "user_encoder"}
    assert all(r.max_abs_error <= TOLERANCE for r in results)
    (actual,) = OnnxEncoder(exported.out_dir / "item_encoder.onnx", exported.item_spec)(*random_item_inputs(model, 5))
    assert actual.shape == (5, 64 + 2 * WIDTH)
    np.testing.assert_allclose(np.linalg.norm(actual[:, :64], axis=1), 1.0, atol=1e-5)
    (user,) = OnnxEncoder(exported.out_dir / "user_encoder.onnx", exported.user_spec)(*users[0][1])
    np.testing.assert_allclose(np.linalg.norm(user[:, 64:], axis=1), 1.5, atol=1e-5)


def test_cold_scale_model_exports_with_item_rows(tmp_path: Path) -> None:
    """With a cold scale the item encoder also takes catalogue rows and carries which rows occur
    in training: the exported graph matches PyTorch, and its frozen part is the scale times
    longer for an item outside training and for a new item (row -1) than for a trained one."""
    model = tiny_model("crossan-ti")
    config = dataclasses.replace(
        model.config, score_temperature=0.1, backbone_prior_weight=0.5, backbone_prior_cold_scale=2.5
    )
    model = type(model)(config).eval()
    model.mark_trained_items(torch.arange(NUM_ITEMS) % 2 == 0)
    exported = export_model(model, tmp_path)
    assert exported.item_spec.input_names[-1] == "item_rows"
    items, users = grid_cases(model)
    assert all(r.max_abs_error <= TOLERANCE for r in validate_grid(model, exported, items, users))
    states = random_item_inputs(model, 3)[:-1]
    rows = torch.tensor([0, 1, -1])
    (actual,) = OnnxEncoder(exported.out_dir / "item_encoder.onnx", exported.item_spec)(*states, rows)
    np.testing.assert_allclose(np.linalg.norm(actual[:, 64:], axis=1), [1.0, 2.5, 2.5], atol=1e-5)


def tampered(path: Path, out: Path, change: Callable[[onnx.ModelProto], None]) -> Path:
    model = onnx.load(str(path))
    change(model)
    onnx.save(model, str(out))
    return out


def test_perturbed_weight_raises_value_mismatch(exported_presets, tmp_path: Path) -> None:
    model, exported = exported_presets("crossan-tiva")

    def perturb(proto: onnx.ModelProto) -> None:
        largest = max(proto.graph.initializer, key=lambda t: int(np.prod(t.dims)))
        values = onnx.numpy_helper.to_array(largest) + np.float32(1e-2)
        largest.CopyFrom(onnx.numpy_helper.from_array(values, largest.name))

    path = tampered(exported.out_dir / "item_encoder.onnx", tmp_path / "item.onnx", perturb)
    items, _ = grid_cases(model)
    reference, _ = exported.references(model)
    with pytest.raises(ValueMismatchError, match="max abs error"):
        validate_encoder(OnnxEncoder(path, exported.item_spec), reference, items)


def test_tolerance_is_enforced(exported_presets) -> None:
    """The same files pass at 1e-4 and fail at a tolerance of zero (errors are ~1e-6, not 0)."""
    model, exported = exported_presets("crossan-tiva")
    _, users = grid_cases(model)
    _, reference = exported.references(model)
    onnx_path = exported.out_dir / "user_encoder.onnx"
    validate_encoder(OnnxEncoder(onnx_path, exported.user_spec), reference, users)
    strict = dataclasses.replace(exported.user_spec, tolerance=0.0)
    with pytest.raises(ValueMismatchError, match="tolerance 0"):
        validate_encoder(OnnxEncoder(onnx_path, strict), reference, users)


def test_renamed_output_raises_name_mismatch(exported_presets, tmp_path: Path) -> None:
    model, exported = exported_presets("crossan-tiva")

    def rename(proto: onnx.ModelProto) -> None:
        old = proto.graph.output[0].name
        for node in proto.graph.node:
            node.output[:] = ["embedding" if name == old else name for name in node.output]
        proto.graph.output[0].name = "embedding"

    path = tampered(exported.out_dir / "user_encoder.onnx", tmp_path / "user.onnx", rename)
    _, users = grid_cases(model)
    _, reference = exported.references(model)
    with pytest.raises(NameMismatchError, match="output names"):
        validate_encoder(OnnxEncoder(path, exported.user_spec), reference, users)


def test_fixed_batch_axis_raises_shape_mismatch(exported_presets, tmp_path: Path) -> None:
    model, exported = exported_presets("crossan-tiva")

    def fix_batch(proto: onnx.ModelProto) -> None:
        proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 2

    path = tampered(exported.out_dir / "user_encoder.onnx", tmp_path / "user.onnx", fix_batch)
    _, users = grid_cases(model)
    _, reference = exported.references(model)
    with pytest.raises(ShapeMismatchError, match="batch"):
        validate_encoder(OnnxEncoder(path, exported.user_spec), reference, users)


def test_size_one_example_is_refused(tmp_path: Path) -> None:
    """A size-1 example would make the batch axis static, so export_onnx refuses it up front."""
    model = tiny_model("sasrec-id")
    with pytest.raises(ValueError, match="at least 2"):
        export_onnx(ItemEncoder(model), item_encoder_spec(model), model.random_item_inputs(1), tmp_path / "item.onnx")


def test_exported_user_encoder_ignores_padded_embeddings(exported_presets) -> None:
    """Serving gathers any table row under the padding mask, so what lies there must not matter."""
    model, exported = exported_presets("crossan-tiva")
    _, users = grid_cases(model)
    encoder = OnnxEncoder(exported.out_dir / "user_encoder.onnx", exported.user_spec)
    for label, (embeddings, padding_mask) in users:
        assert padding_mask[0, :-1].all() and not padding_mask[:, -1].any(), label
        (with_rows,) = encoder(embeddings, padding_mask)
        (with_zeros,) = encoder(embeddings.masked_fill(padding_mask.unsqueeze(-1), 0.0), padding_mask)
        (with_noise,) = encoder(embeddings + 100.0 * padding_mask.unsqueeze(-1), padding_mask)
        np.testing.assert_array_equal(with_rows, with_zeros, err_msg=label)
        np.testing.assert_array_equal(with_rows, with_noise, err_msg=label)


def test_history_window_left_pads_catalogue_rows() -> None:
    """1-based item indices in, 0-based catalogue rows out; padded positions point at row 0."""
    rows, padding_mask = history_window([np.array([3, 5, 7, 9]), np.array([2]), np.array([4, 1])], 3)
    np.testing.assert_array_equal(rows, [[4, 6, 8], [0, 0, 1], [0, 3, 0]])
    np.testing.assert_array_equal(padding_mask, [[False, False, False], [True, True, False], [True, False, False]])
    assert rows.dtype == np.int64 and padding_mask.dtype == np.bool_


def test_top_k_rows_excludes_history_and_breaks_ties_by_row() -> None:
    table = np.array([[1.0, 0.0], [2.0, 0.0], [2.0, 0.0], [0.0, 1.0], [3.0, 0.0]], dtype=np.float32)
    users = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    ranked = top_k_rows(users, table, [np.array([5]), np.array([1, 2, 3, 5])], k=3)
    np.testing.assert_array_equal(ranked[0], [1, 2, 0])  # row 4 (item 5) seen; rows 1 and 2 tie
    np.testing.assert_array_equal(ranked[1], [3])  # only one unseen row is left


def test_changed_ranking_raises_recommendation_mismatch() -> None:
    reference = [np.arange(10), np.arange(10, 20)]
    assert check_agreement(reference, [r.copy() for r in reference], "same").fraction == 1.0
    swapped = [reference[0], reference[1][[1, 0, *range(2, 10)]]]
    with pytest.raises(RecommendationMismatchError, match="1 of 2 users"):
        check_agreement(reference, swapped, "swapped")


def test_near_tie_swaps_are_allowed_up_to_the_tolerance_and_counted() -> None:
    """Users 0 and 1 see rows 0 and 1 swapped; their PyTorch scores differ by 5e-6 for user 0 and
    by 0.1 for user 1, so only user 0's swap is a near-tie at tolerance 1e-5."""
    reference = [np.arange(10), np.arange(10), np.arange(10)]
    swapped = [r[[1, 0, *range(2, 10)]] for r in reference[:2]] + [reference[2]]
    scores = np.tile(np.linspace(1.0, 0.5, 20), (3, 1))
    scores[0, 1] = scores[0, 0] - 5e-6
    scores[1, 1] = scores[1, 0] - 0.1
    with pytest.raises(RecommendationMismatchError, match="1 of 3 users; user 1"):
        check_agreement(reference, swapped, "swapped", 10, lambda users: scores[users], 1e-5)
    result = check_agreement(reference, swapped[:1] + reference[1:], "swapped", 10, lambda users: scores[users], 1e-5)
    assert (result.agreeing, result.near_ties, result.num_users) == (2, 1, 3)


# --- a toy-trained run, end to end -------------------------------------------------------------


def test_export_command_validates_toy_run(toy_run: Path, toy_export: Path) -> None:
    names = {p.name for p in toy_export.iterdir()}
    assert names == {
        "item_encoder.onnx",
        "user_encoder.onnx",
        "item_encoder.pt",
        "user_encoder.pt",
        TABLE_FILE,
        "validation.json",
    }
    report = json.loads((toy_export / "validation.json").read_text())
    assert report["preset"] == "crossan-tiva"
    assert {"onnxruntime CPU", "torchscript"} <= {g["runtime"] for g in report["max_abs_errors"]}
    assert all(g["max_abs_error"] <= TOLERANCE for g in report["max_abs_errors"])
    agreement = {
        a["runtime"]: (a["num_users"], a["fraction"])
        for a in report["top_k_agreement"]
        if "re-embedded" not in a["runtime"]
    }
    run = open_run(toy_run)
    assert agreement["onnxruntime CPU"] == agreement["torchscript"] == (run.dataset.num_users, 1.0)

    table, item_ids = load_item_table(toy_export / TABLE_FILE)
    assert item_ids == run.dataset.item_ids
    reference = run.model.catalogue_embeddings(run.features.gather, run.dataset.num_items).numpy()
    assert table.shape == reference.shape and np.abs(table - reference).max() <= TOLERANCE


def pytorch_top10(run_dir: Path, users: list[int]) -> list[list[str]]:
    """Top-10 item ids the way the evaluator ranks them, straight from the PyTorch model's
    contract (zero-padded item table, 1-based windows), independent of crossan.export.ranking."""
    run = open_run(run_dir)
    model, max_len = run.model, run.model.config.max_seq_len
    items = model.catalogue_embeddings(run.features.gather, run.dataset.num_items)
    histories = [run.dataset.history(u, "test") for u in users]
    window = torch.zeros(len(users), max_len, dtype=torch.long)
    for row, history in enumerate(histories):
        tail = torch.as_tensor(history[-max_len:])
        window[row, max_len - len(tail) :] = tail
    with torch.no_grad():
        scores = model.scores(model.user_embeddings(model.item_table(items), window), items)
    for row, history in enumerate(histories):
        scores[row, torch.as_tensor(history - 1)] = -torch.inf
    return [[run.dataset.item_ids[i] for i in row] for row in scores.topk(10).indices.tolist()]


def test_serving_helper_matches_pytorch(toy_run: Path, toy_export: Path) -> None:
    run = open_run(toy_run)
    users = list(range(20))
    histories = [[run.dataset.item_ids[i - 1] for i in run.dataset.history(u, "test")] for u in users]
    recommender = OnnxRecommender(toy_export)
    recommended = recommender.recommend(histories, k=10)
    assert recommended == pytorch_top10(toy_run, users)
    assert all(not set(r) & set(h) for r, h in zip(recommended, histories, strict=True))
    with pytest.raises(UnknownItemError, match="no-such-item"):
        recommender.recommend([[histories[0][0], "no-such-item"]])


SERVING_DOC = REPO / "docs" / "serving.md"


def readme_serving_snippet(path: Path = SERVING_DOC) -> str:
    """The first Python block of the section of `path` (docs/serving.md) whose heading contains
    "Serving with ONNX Runtime"; the section runs to the next heading of the same or a higher
    level outside code blocks. A missing file, section or block fails the test instead of
    skipping it: the example is documentation that must keep running."""
    assert path.is_file(), f"{path} is missing: it holds the serving example"
    lines = path.read_text().splitlines()
    start = level = None
    in_code = False
    section: list[str] = []
    for line in lines:
        if line.startswith("```"):
            in_code = not in_code
        heading = None if in_code else re.match(r"(#{1,6}) ", line)
        if start is None:
            if heading and "Serving with ONNX Runtime" in line:
                start, level = line, len(heading.group(1))
        elif heading and len(heading.group(1)) <= level:
            break
        else:
            section.append(line)
    assert start is not None, f"{path} has no heading containing 'Serving with ONNX Runtime'"
    block = re.search(r"^```python\n(.*?)^```", "\n".join(section) + "\n", re.M | re.S)
    assert block is not None, f"{path}: the section {start!r} has no ```python block"
    return block.group(1)


def test_readme_serving_example_runs(
    toy_export: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The serving example of docs/serving.md ("Serving with ONNX Runtime"), run as written from a
    folder where its export path exists."""
    snippet = readme_serving_snippet()
    export_dir = re.search(r"OnnxRecommender\(\"([^\"]+)\"\)", snippet).group(1)
    (tmp_path / export_dir).parent.mkdir(parents=True)
    (tmp_path / export_dir).symlink_to(toy_export, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    exec(compile(snippet, str(SERVING_DOC.relative_to(REPO)), "exec"), {"__name__": "__readme__"})
    printed = capsys.readouterr().out
    assert re.search(r"i\d{4}", printed), printed
