"""New items from raw content without PyTorch: the torch-free preprocessing equals the
transformers processors, the exported backbones reproduce the feature cache's states, and a
held-back item added through `OnnxRecommender.add_items` gets the embedding it had in the
training catalogue, in a process that never imports torch, transformers or triton.

Tolerances: pixels and token ids exactly equal; audio filter banks within 1e-5 (float64 NumPy
on both sides, summed in another order); served states within 1e-3 of PyTorch's
(`crossan.export.backbones.BACKBONE_TOLERANCE`; measured about 5e-6); a re-added item's embedding within
1e-4 of its catalogue row (measured about 4e-7).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import ASTFeatureExtractor, VideoMAEImageProcessorPil, ViTImageProcessorPil

from crossan.export.backbones import BACKBONE_TOLERANCE, serving_preprocessor
from crossan.export.item_table import TABLE_FILE, load_item_table, save_item_table
from crossan.export.preprocessing import load_preprocessing, save_preprocessing
from crossan.export.providers import CPU, CUDA, execution_providers
from crossan.export.serve import OnnxRecommender
from crossan.zoo.backbones import BackboneSpec, StateExtractor, load_backbone
from crossan.zoo.core.errors import ConfigError
from crossan.zoo.data import DataError, SequenceDataset
from crossan.zoo.runs.run import open_run

REPO = Path(__file__).resolve().parents[1]
MODALITIES = ("text", "image", "video", "audio")


def extractor_for(modality: str, processor: object | None = None) -> StateExtractor:
    extractor = StateExtractor(load_backbone(BackboneSpec(modality, "tiny")), side_layers=2, text_max_tokens=12)
    if processor is not None:
        extractor.backbone.processor = processor
    return extractor


def random_image(generator: np.random.Generator, height: int, width: int, mode: str = "RGB") -> Image.Image:
    return Image.fromarray(generator.integers(0, 256, (height, width, 3), dtype=np.uint8)).convert(mode)


# --- the torch-free preprocessing against the processors it replaces ------------------------


def test_text_preprocessing_equals_the_tokenizer(tmp_path: Path) -> None:
    extractor = extractor_for("text")
    titles = ["a kettle", "Über-long title " * 20, "", "Mixed CASE, punctuation! & numbers 42"]
    served = serving_preprocessor(extractor, tmp_path)(titles)
    expected = extractor.model_inputs(titles)
    assert served["input_ids"].shape[1] == 12  # cut at text_max_tokens, padded to the longest
    for name in ("input_ids", "attention_mask"):
        np.testing.assert_array_equal(served[name], expected[name].numpy())


@pytest.mark.parametrize("processor", [None, ViTImageProcessorPil()], ids=["tiny-32", "vit-base-224"])
def test_image_preprocessing_equals_the_processor(tmp_path: Path, processor: object | None) -> None:
    extractor = extractor_for("image", processor)
    generator = np.random.default_rng(0)
    images = [
        random_image(generator, 50, 37),
        random_image(generator, 300, 400, "L"),
        random_image(generator, 224, 224, "RGBA").convert("RGB"),
    ]
    served = serving_preprocessor(extractor, tmp_path)([image.convert("RGB") for image in images])
    expected = extractor.model_inputs([image.convert("RGB") for image in images])["pixel_values"].numpy()
    np.testing.assert_array_equal(served["pixel_values"], expected)


@pytest.mark.parametrize("processor", [None, VideoMAEImageProcessorPil()], ids=["tiny-32", "videomae-base-224"])
def test_video_preprocessing_equals_the_processor(tmp_path: Path, processor: object | None) -> None:
    extractor = extractor_for("video", processor)
    generator = np.random.default_rng(1)
    videos = [
        [generator.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(16)] for h, w in ((48, 64), (257, 113))
    ]
    served = serving_preprocessor(extractor, tmp_path)(videos)
    expected = extractor.model_inputs(videos)["pixel_values"].numpy()
    np.testing.assert_array_equal(served["pixel_values"], expected)


@pytest.mark.parametrize("processor", [None, ASTFeatureExtractor()], ids=["tiny-64-mel", "ast-base-128-mel"])
def test_audio_preprocessing_equals_the_feature_extractor(tmp_path: Path, processor: object | None) -> None:
    extractor = extractor_for("audio", processor)
    generator = np.random.default_rng(2)
    # Three seconds (cut to max_length frames or padded), and one second (zero-padded).
    waves = [np.clip(generator.normal(0, 0.3, n), -1, 1).astype(np.float32) for n in (48000, 16000)]
    preprocessor = serving_preprocessor(extractor, tmp_path)
    served = preprocessor(waves)["input_values"]
    expected = extractor.model_inputs(waves)["input_values"].numpy()
    assert served.shape == expected.shape
    np.testing.assert_allclose(served, expected, atol=1e-5, rtol=0)
    assert not np.allclose(served[0], served[1])


def test_preprocessing_file_round_trips(tmp_path: Path) -> None:
    preprocessors = {m: serving_preprocessor(extractor_for(m), tmp_path) for m in MODALITIES}
    save_preprocessing(tmp_path, preprocessors)
    loaded = load_preprocessing(tmp_path)
    assert {m: p.to_dict() for m, p in loaded.items()} == {m: p.to_dict() for m, p in preprocessors.items()}
    json.loads((tmp_path / "preprocessing.json").read_text())  # plain JSON, nothing pickled


def test_unserved_processor_settings_are_refused(tmp_path: Path) -> None:
    cropping = ViTImageProcessorPil(do_center_crop=True, crop_size={"height": 20, "width": 20})
    with pytest.raises(ConfigError, match="without a crop"):
        serving_preprocessor(extractor_for("image", cropping), tmp_path)


# --- the exported run ----------------------------------------------------------------------


@pytest.mark.slow
def test_export_with_backbones_validates_every_modality(toy_export_with_backbones: Path) -> None:
    names = {p.name for p in toy_export_with_backbones.iterdir()}
    assert names == {
        "item_encoder.onnx",
        "user_encoder.onnx",
        "item_encoder.pt",
        "user_encoder.pt",
        TABLE_FILE,
        "validation.json",
        "preprocessing.json",
        "tokenizer.json",
        "audio_filters.safetensors",
        *(f"{m}_backbone.onnx" for m in MODALITIES),
    }
    report = json.loads((toy_export_with_backbones / "validation.json").read_text())
    checks = {c["modality"]: c for c in report["backbone_states"]}
    assert set(checks) == set(MODALITIES)
    assert all(0 < c["max_abs_error"] <= BACKBONE_TOLERANCE and c["items"] == 32 for c in checks.values())
    reembedded = [a for a in report["top_k_agreement"] if "re-embedded" in a["runtime"]]
    assert len(reembedded) == 1 and reembedded[0]["agreeing"] + reembedded[0]["near_ties"] == reembedded[0]["num_users"]
    assert report["reembedded_items_max_abs_error"] < 1e-4
    specs = {s["name"]: s for s in report["specs"]}
    assert specs["text_backbone"]["input_names"] == ["input_ids", "attention_mask"]
    assert specs["text_backbone"]["max_sizes"] == {"tokens": 30}


def test_changed_backbone_is_refused(toy_run: Path, tmp_path: Path) -> None:
    from crossan.export.exporter import run_extractors

    run = open_run(toy_run)
    run.config["features"]["backbones"]["image"]["weights_hash"] = "0" * 16
    with pytest.raises(ConfigError, match=r"image backbone is not the one .* \(weights_hash differ\)"):
        run_extractors(run)


HELD_BACK = 5
SERVE_NEW_ITEM = """
import json, sys
import numpy as np
from crossan.export.serve import OnnxRecommender
arguments = json.loads(sys.argv[1])
recommender = OnnxRecommender(arguments["folder"], index=arguments["index"])
embedding = recommender.add_items([arguments["item"]], arguments["content"], save=True)
top = recommender.recommend([[arguments["item"]]], k=5)
reloaded = OnnxRecommender(arguments["folder"], index=arguments["index"])
loaded = sorted(m for m in ("torch", "transformers", "triton") if m in sys.modules)
print(json.dumps({"embedding": embedding[0].tolist(), "top": top[0], "providers": recommender.providers,
                  "reloaded_top": reloaded.recommend([[arguments["item"]]], k=5)[0],
                  "reloaded_has_item": arguments["item"] in reloaded.item_ids, "loaded": loaded}))
"""


@pytest.mark.slow
def test_held_back_item_is_added_from_raw_content_without_torch(
    toy_run: Path, toy_export_with_backbones: Path, tmp_path: Path
) -> None:
    """With the FAISS index, so the new row also joins the index and is saved with it."""
    index = "faiss"
    run = open_run(toy_run)
    dataset = run.dataset
    folder = tmp_path / "export"
    shutil.copytree(toy_export_with_backbones, folder)
    table, item_ids = load_item_table(folder / TABLE_FILE)
    save_item_table(
        folder / TABLE_FILE,
        np.delete(table, HELD_BACK, axis=0),
        item_ids[:HELD_BACK] + item_ids[HELD_BACK + 1 :],
        source="held back one item",
    )
    item = dataset.item_ids[HELD_BACK]
    content = {
        "text": [dataset.titles[HELD_BACK]],
        "image": [str(dataset.cover_paths[HELD_BACK])],
        "video": [str(dataset.video_paths[HELD_BACK])],
        "audio": [str(dataset.video_paths[HELD_BACK])],
    }
    arguments = json.dumps({"folder": str(folder), "item": item, "content": content, "index": index})
    result = subprocess.run(
        [sys.executable, "-c", SERVE_NEW_ITEM, arguments], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    served = json.loads(result.stdout)
    assert served["loaded"] == []
    assert served["providers"] == [CPU]
    np.testing.assert_allclose(served["embedding"], table[HELD_BACK], atol=1e-4, rtol=0)
    assert item not in served["top"] and len(served["top"]) == 5
    assert served["reloaded_has_item"] and served["reloaded_top"] == served["top"]


def new_item_sources(dataset: SequenceDataset) -> dict[str, list[str]]:
    """One made-up item's content: a new title, with the first item's cover and video."""
    return {
        "text": ["new title"],
        "image": [str(dataset.cover_paths[0])],
        "video": [str(dataset.video_paths[0])],
        "audio": [str(dataset.video_paths[0])],
    }


@pytest.mark.slow
def test_add_items_refuses_bad_requests(toy_run: Path, toy_export_with_backbones: Path, tmp_path: Path) -> None:
    dataset = open_run(toy_run).dataset
    recommender = OnnxRecommender(toy_export_with_backbones)
    sources = new_item_sources(dataset)
    with pytest.raises(ValueError, match="already in the table: i0001"):
        recommender.add_items(["i0001"], sources)
    with pytest.raises(ValueError, match="repeated new"):
        recommender.add_items(["new", "new"], {m: v * 2 for m, v in sources.items()})
    with pytest.raises(ValueError, match="missing audio"):
        recommender.add_items(["new"], {m: v for m, v in sources.items() if m != "audio"})
    with pytest.raises(ValueError, match="1 item ids, but content sources"):
        recommender.add_items(["new"], {**sources, "text": ["a", "b"]})
    with pytest.raises(DataError, match="missing.jpg"):
        recommender.add_items(["new"], {**sources, "image": [str(tmp_path / "missing.jpg")]})
    assert "new" not in recommender.item_ids and len(recommender.item_ids) == dataset.num_items


@pytest.mark.slow
def test_threads_bound_the_sessions_add_items_opens(toy_run: Path, toy_export_with_backbones: Path) -> None:
    """threads=1 reaches the item encoder and the four backbones, opened by `add_items`; the embedding
    differs only by float32 rounding (some kernels split their sums by thread; measured 7e-8)."""
    sources = new_item_sources(open_run(toy_run).dataset)
    free = OnnxRecommender(toy_export_with_backbones)
    bounded = OnnxRecommender(toy_export_with_backbones, threads=1)
    np.testing.assert_allclose(bounded.add_items(["new"], sources), free.add_items(["new"], sources), atol=1e-6, rtol=0)
    assert bounded._content is not None
    sessions = [bounded._content.item_session, *bounded._content.backbones.values()]
    threads = [
        (s.get_session_options().intra_op_num_threads, s.get_session_options().inter_op_num_threads) for s in sessions
    ]
    assert threads == [(1, 1)] * (1 + len(MODALITIES))


def test_an_export_without_backbones_refuses_new_items_naming_the_option(toy_run: Path, toy_export: Path) -> None:
    with pytest.raises(FileNotFoundError, match="--with-backbones"):
        OnnxRecommender(toy_export).add_items(["new"], new_item_sources(open_run(toy_run).dataset))


# --- execution providers -------------------------------------------------------------------


def test_cuda_is_asked_for_only_with_a_device(monkeypatch: pytest.MonkeyPatch) -> None:
    import crossan.export.providers as providers

    assert torch.cuda.is_available() == (providers.cuda_device_count() > 0)
    monkeypatch.setattr(providers.ort, "get_available_providers", lambda: [CUDA, CPU])
    monkeypatch.setattr(providers, "cuda_device_count", lambda: 0)
    assert execution_providers() == [CPU]
    monkeypatch.setattr(providers, "cuda_device_count", lambda: 1)
    assert execution_providers() == [CUDA, CPU]
    monkeypatch.setattr(providers.ort, "get_available_providers", lambda: [CPU])
    assert execution_providers() == [CPU]
