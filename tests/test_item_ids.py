"""The optional ID term of content models: zero for cold and new items, trained only for items
seen in training, exported with the item encoder."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from rich.console import Console

from crossan.export.content import NO_ID_ROW as SERVED_NO_ID_ROW
from crossan.export.exporter import export_model
from crossan.zoo.core.errors import ConfigError
from crossan.zoo.data import read_microlens
from crossan.zoo.features.store import ItemFeatures
from crossan.zoo.layers.item_ids import NO_ID_ROW, ItemIdEmbedding
from crossan.zoo.models import build_model, preset_config
from crossan.zoo.training.trainer import TrainConfig, Trainer

NUM_STATES, WIDTH = 3, 16


def content_model(num_items: int, id_term: bool = True) -> torch.nn.Module:
    config = preset_config("crossan-t", adapter_dim=8, item_id_term=id_term, num_blocks=1, ffn_dim=32)
    torch.manual_seed(0)
    return build_model(config.fit_to_data(num_items, {"text": (NUM_STATES, WIDTH)}))


def test_id_vectors_are_zero_for_unseen_rows_and_new_items() -> None:
    ids = ItemIdEmbedding(4, 2)
    with torch.no_grad():
        ids.weight.copy_(torch.arange(8.0).view(4, 2) + 1)
    ids.mark_seen(torch.tensor([True, False, True, True]))
    vectors = ids(torch.tensor([0, 1, 3, NO_ID_ROW]))
    assert vectors.tolist() == [[1.0, 2.0], [0.0, 0.0], [7.0, 8.0], [0.0, 0.0]]
    assert NO_ID_ROW == SERVED_NO_ID_ROW  # the torch-free serving side passes the same row


def test_content_model_with_id_term_takes_rows_and_starts_as_pure_content() -> None:
    model = content_model(10).eval()
    assert model.item_input_names == ("states_text", "item_rows")
    assert content_model(10, id_term=False).item_input_names == ("states_text",)
    states = torch.randn(5, NUM_STATES, WIDTH)
    rows = torch.tensor([0, 3, 4, 9, NO_ID_ROW])
    with torch.no_grad():
        torch.testing.assert_close(model.encode_items(states, rows), model.encode_content(states))
        model.item_ids.weight.normal_()
        model.mark_trained_items(torch.arange(10) != 4)
        shift = model.encode_items(states, rows) - model.encode_content(states)
    torch.testing.assert_close(shift[:2], model.item_ids.weight[[0, 3]])
    assert shift[2:3].abs().max() == 0 and shift[4:].abs().max() == 0  # row 4 unseen, then a new item
    torch.testing.assert_close(shift[3], model.item_ids.weight[9])


def test_training_moves_only_the_id_vectors_of_training_items(toy_root: Path) -> None:
    dataset = read_microlens(toy_root, name="toy")
    model = content_model(dataset.num_items)
    features = ItemFeatures(
        dataset.num_items, {"text": torch.randn(dataset.num_items, NUM_STATES, WIDTH)}, with_rows=True
    )
    # Every item is drawn as a negative (the full softmax), the cold ones included.
    config = TrainConfig(epochs=1, patience=1, steps_per_epoch=3, full_softmax=True)
    trainer = Trainer(model, dataset, features, config, console=Console(quiet=True))
    assert bool(model.item_ids.seen.all())  # the toy set has no cold item: make some
    cold = torch.zeros(dataset.num_items, dtype=torch.bool)
    cold[::7] = True
    model.mark_trained_items(~cold)
    trainer.fit()
    moved = model.item_ids.weight.detach().abs().sum(dim=1) > 0
    assert not moved[cold].any() and moved[~cold].float().mean() > 0.9


def test_id_term_exports_and_new_items_get_their_content_embedding(tmp_path: Path) -> None:
    model = content_model(20).eval()
    with torch.no_grad():
        model.item_ids.weight.normal_()
    model.mark_trained_items(torch.arange(20) % 2 == 0)
    exported = export_model(model, tmp_path)
    session = ort.InferenceSession(str(tmp_path / exported.item_spec.onnx_file), providers=["CPUExecutionProvider"])
    states = torch.randn(4, NUM_STATES, WIDTH)
    rows = torch.tensor([0, 1, 2, NO_ID_ROW])
    served = session.run(None, {"states_text": states.numpy(), "item_rows": rows.numpy()})[0]
    with torch.no_grad():
        expected = model.encode_items(states, rows).numpy()
        content = model.encode_content(states).numpy()
    np.testing.assert_allclose(served, expected, atol=1e-5)
    np.testing.assert_allclose(served[[1, 3]], content[[1, 3]], atol=1e-5)  # unseen row 1, new item
    assert np.abs(served[0] - content[0]).max() > 1e-2


def test_id_term_needs_a_catalogue_and_is_a_content_model_option() -> None:
    config = preset_config("crossan-t", item_id_term=True)
    with pytest.raises(ConfigError, match="item_id_term needs num_items"):
        build_model(config)
    with pytest.raises(ConfigError, match="item_id_term"):
        preset_config("sasrec-id", item_id_term=True)
    assert dataclasses.replace(config, num_items=3).reads_item_rows


def test_id_dropout_acts_in_training_only_and_needs_the_term() -> None:
    ids = ItemIdEmbedding(3, 1000, dropout=0.5)
    with torch.no_grad():
        ids.weight.fill_(1.0)
    ids.mark_seen(torch.tensor([True, True, False]))
    rows = torch.tensor([0, 2])
    torch.manual_seed(0)
    trained = ids.train()(rows)
    assert set(trained[0].unique().tolist()) == {0.0, 2.0} and 0.4 < (trained[0] == 0).float().mean() < 0.6
    assert trained[1].abs().sum() == 0
    assert ids.eval()(rows).tolist() == [[1.0] * 1000, [0.0] * 1000]
    with pytest.raises(ConfigError, match="item_id_dropout needs item_id_term"):
        preset_config("crossan-t", item_id_dropout=0.5)
    with pytest.raises(ConfigError, match=r"item_id_dropout must lie in \[0, 1\)"):
        preset_config("crossan-t", item_id_term=True, item_id_dropout=1.0)
