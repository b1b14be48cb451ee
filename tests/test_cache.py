"""Feature cache: round trip, staleness, crash safety, damaged files; item features over it; LayerDrop indices;
state extraction."""

from __future__ import annotations

import gc
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from crossan.zoo.backbones import BackboneSpec, StateExtractor, kept_state_indices, load_backbone
from crossan.zoo.data import read_microlens
from crossan.zoo.features.prepare import build_state_cache, state_metadata
from crossan.zoo.features.states import cache_path, open_states, write_states
from crossan.zoo.features.store import ItemFeatures


def test_kept_indices_follow_layerdrop() -> None:
    assert kept_state_indices(12, 6) == [0, 2, 4, 6, 8, 10, 12]
    assert kept_state_indices(6, 6) == [0, 1, 2, 3, 4, 5, 6]
    assert kept_state_indices(24, 6) == [0, 4, 8, 12, 16, 20, 24]
    assert kept_state_indices(12, 3) == [0, 4, 8, 12]
    with pytest.raises(ValueError, match="distinct states"):
        kept_state_indices(4, 6)


def test_write_and_memory_map_round_trip(tmp_path: Path) -> None:
    states = torch.randn(10, 3, 8).half()
    path = tmp_path / "states.safetensors"
    write_states(path, states, {"a": "1"})
    mapped = open_states(path, {"a": "1"})
    assert mapped is not None and mapped.dtype == torch.float16
    assert torch.equal(mapped, states)
    assert open_states(path, {"a": "2"}) is None  # stale metadata
    assert open_states(tmp_path / "absent.safetensors") is None
    path.write_bytes(path.read_bytes()[:-7])  # a torn file never loads
    assert open_states(path) is None
    assert not list(tmp_path.glob(".*.tmp"))


def _file_maps(path: Path) -> list[str]:
    """This process's memory mappings of `path` (Linux `/proc/self/maps` lines)."""
    return [line for line in Path("/proc/self/maps").read_text().splitlines() if line.endswith(str(path.resolve()))]


@pytest.mark.skipif(not Path("/proc/self/maps").is_file(), reason="needs /proc/self/maps")
def test_mapped_states_outlive_the_handle_and_never_write_the_file(tmp_path: Path) -> None:
    states = torch.randn(64, 3, 8).half()
    path = tmp_path / "states.safetensors"
    write_states(path, states, {"a": "1"})
    written = path.read_bytes()
    mapped = open_states(path, {"a": "1"})
    gc.collect()  # the safe_open handle is gone; the tensor keeps its own map
    (line,) = _file_maps(path)
    assert line.split()[1] == "rw-p"  # private: copy-on-write, never shared with the file
    assert mapped.untyped_storage().nbytes() >= states.numel() * 2  # the file's data, not a copy of part of it
    assert torch.equal(mapped, states)
    mapped[5] = 42.0
    assert (mapped[5] == 42.0).all() and torch.equal(mapped[6:], states[6:])
    assert path.read_bytes() == written
    assert torch.equal(open_states(path, {"a": "1"}), states)
    del mapped
    gc.collect()
    assert _file_maps(path) == []


@pytest.mark.parametrize("damage", ["torn data", "torn header", "empty", "header length only", "trailing bytes"])
def test_damaged_files_do_not_load(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "states.safetensors"
    write_states(path, torch.randn(10, 3, 8).half(), {"a": "1"})
    data = path.read_bytes()
    path.write_bytes(
        {
            "torn data": data[:-2],
            "torn header": data[:20],
            "empty": b"",
            "header length only": data[:8],
            "trailing bytes": data + b"\0\0",
        }[damage]
    )
    assert open_states(path, {"a": "1"}) is None
    assert open_states(path) is None


def test_other_dtypes_and_tensor_names_do_not_load(tmp_path: Path) -> None:
    path = tmp_path / "states.safetensors"
    write_states(path, torch.randn(10, 3, 8), {"a": "1"})  # float32
    assert open_states(path, {"a": "1"}) is None
    save_file({"other": torch.randn(10, 3, 8).half()}, path, metadata={"a": "1"})
    assert open_states(path, {"a": "1"}) is None
    save_file({"states": torch.randn(10, 3, 8).half()}, path)  # no metadata at all
    assert open_states(path, {"a": "1"}) is None
    assert open_states(path) is not None


def test_failed_write_leaves_no_file(tmp_path: Path) -> None:
    path = tmp_path / "states.safetensors"
    with pytest.raises(TypeError):
        write_states(path, torch.randn(2, 2, 2).half(), {"bad": 3})  # metadata values must be strings
    assert not path.exists() and not list(tmp_path.iterdir())


def test_item_features_gather_float32_batches_from_the_mapped_cache(tmp_path: Path) -> None:
    states = torch.randn(10, 3, 8).half()
    path = tmp_path / "states.safetensors"
    write_states(path, states, {"a": "1"})
    mapped = open_states(path)
    features = ItemFeatures(10, {"text": mapped, "image": states[:, :2]})
    assert features.modalities == ("text", "image") and features.shapes() == {"text": (3, 8), "image": (2, 8)}
    rows = torch.tensor([7, 0, 7])
    text, image = features.gather(rows)
    assert text.dtype == image.dtype == torch.float32
    assert torch.equal(text, states[rows].float()) and torch.equal(image, states[rows, :2].float())
    mapped[7] = 1.0  # gather reads the map itself: nothing was converted up front
    assert (features.gather(torch.tensor([7]))[0] == 1.0).all()


def test_item_features_of_an_id_model_are_the_rows() -> None:
    features = ItemFeatures(5)
    rows = torch.tensor([4, 1])
    (gathered,) = features.gather(rows)
    assert torch.equal(gathered, rows) and features.shapes() == {} and features.modalities == ()


def test_item_features_reject_states_of_another_catalogue() -> None:
    with pytest.raises(ValueError, match=r"text features must be \[5, \.\.\.\], got \[4, 3, 8\]"):
        ItemFeatures(5, {"text": torch.zeros(4, 3, 8)})


@pytest.mark.parametrize("modality", ["text", "image", "video", "audio"])
def test_cached_states_equal_backbone_hidden_states(toy_root: Path, tmp_path: Path, modality: str) -> None:
    """Row r of the cache is the CLS state at the kept layers of item r, as the backbone computes it."""
    dataset = read_microlens(toy_root, name="toy")
    extractor = StateExtractor(load_backbone(BackboneSpec(modality, "tiny")), side_layers=3)
    metadata = state_metadata(dataset, extractor)
    path = cache_path(tmp_path, metadata, modality)
    cached = build_state_cache(dataset, extractor, path, batch_size=50)
    assert cached.shape == (dataset.num_items, 4, extractor.backbone.width)
    row = 37
    inputs = extractor.model_inputs([extractor.read_item(dataset, row)])
    with torch.no_grad():
        hidden = extractor.backbone.model(**inputs, output_hidden_states=True).hidden_states
    expected = torch.stack([hidden[i][0, 0] for i in (0, 2, 4, 6)])
    torch.testing.assert_close(cached[row].float(), expected, atol=2e-2, rtol=2e-3)  # float16 storage
    assert open_states(path, metadata) is not None
    assert json.loads(metadata["kept_indices"]) == [0, 2, 4, 6]


def test_stale_fingerprint_changes_the_cache_key(toy_root: Path) -> None:
    dataset = read_microlens(toy_root, name="toy")
    extractor = StateExtractor(load_backbone(BackboneSpec("text", "tiny")), side_layers=6)
    before = state_metadata(dataset, extractor)
    dataset.titles[0] = dataset.titles[0] + " changed"
    dataset._fingerprint = None
    after = state_metadata(dataset, extractor)
    assert before["dataset_fingerprint"] != after["dataset_fingerprint"]
    assert cache_path(Path("c"), before, "text") != cache_path(Path("c"), after, "text")


def test_mean_pooling_ignores_padding_tokens() -> None:
    extractor = StateExtractor(load_backbone(BackboneSpec("text", "tiny", pooling="mean")), side_layers=6)
    alone = extractor.encode(["red fox"])
    batched = extractor.encode(["red fox", "a much longer title with many more word pieces in it"])
    torch.testing.assert_close(batched[0], alone[0], atol=1e-4, rtol=1e-4)


def test_text_max_tokens_cuts_long_titles_and_keys_the_cache(toy_root: Path) -> None:
    backbone = load_backbone(BackboneSpec("text", "tiny", pooling="mean"))
    short_cut, long_cut = StateExtractor(backbone, 6, text_max_tokens=4), StateExtractor(backbone, 6, 30)
    long_title = "a much longer title with many more word pieces in it"
    assert not torch.allclose(short_cut.encode([long_title]), long_cut.encode([long_title]))
    torch.testing.assert_close(short_cut.encode(["red"]), long_cut.encode(["red"]))
    dataset = read_microlens(toy_root, name="toy")
    keyed = {cache_path(Path("c"), state_metadata(dataset, e), "text") for e in (short_cut, long_cut)}
    assert len(keyed) == 2
    assert json.loads(state_metadata(dataset, short_cut)["preprocessing"])["max_tokens"] == 4


@pytest.mark.parametrize("tokens, message", [(0, "at least 1"), (65, "exceeds the text backbone's 64 positions")])
def test_text_max_tokens_out_of_range_is_an_error(tokens: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        StateExtractor(load_backbone(BackboneSpec("text", "tiny")), 6, text_max_tokens=tokens)


def imported_modules(path: Path) -> set[str]:
    """The modules a source file imports (absolute names)."""
    import ast

    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    return names | {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}


def test_storage_and_extraction_stay_apart() -> None:
    """The feature package orchestrates: its storage modules never reach the backbones, and the
    extractor never reaches the feature package, so preparation has no back and forth."""
    zoo = Path(__file__).resolve().parents[1] / "zoo"
    for storage in ("states.py", "inputs.py", "store.py"):
        assert not {m for m in imported_modules(zoo / "features" / storage) if m.startswith("crossan.zoo.backbones")}
    assert not {m for m in imported_modules(zoo / "backbones" / "extractor.py") if m.startswith("crossan.zoo.features")}
