"""The uncached baselines (`fft-*`, `adapter-*`, `lora-*`): trainable parameters at the paper's
widths, which parameters one optimiser step changes, starting from a loaded backbone,
activation checkpointing, and export.
"""

from __future__ import annotations

import re

import pytest
import torch

from crossan.export.exporter import export_model, validate_grid
from crossan.export.validation import item_cases, user_cases
from crossan.zoo.backbones.tiny import tiny_backbone
from crossan.zoo.core.errors import ConfigError
from crossan.zoo.models import config_from_dict, create_model
from crossan.zoo.models.end_to_end import ADDED_WEIGHT
from crossan.zoo.models.recommender import Recommender

PAPER_TABLE_4 = {"fft-ti": 194_897_216, "adapter-ti": 38_017_088, "lora-ti": 37_992_512}
# One modality: BERT-base alone, one head, concat fusion over one tower (64 x 64 + 64), SASRec.
TEXT_ONLY = {"fft-t": 108_891_648 + 153_600, "adapter-t": 24 * 787_712 + 153_600, "lora-t": 24 * 787_200 + 153_600}
TOKENS = 8


def trainable(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", [*PAPER_TABLE_4, *TEXT_ONLY])
def test_trainable_parameters_at_the_papers_widths(name: str) -> None:
    with torch.device("meta"):  # shapes only: BERT-base and ViT-base from their default configs
        model = create_model(name)
    assert trainable(model) == {**PAPER_TABLE_4, **TEXT_ONLY}[name]


def tiny_model(name: str, **overrides: object) -> tuple[Recommender, dict[str, dict[str, torch.Tensor]]]:
    """`name` over the tiny BERT and ViT, started from their (seeded) weights, without dropout."""
    text, _ = tiny_backbone("text", seed=0)
    image, _ = tiny_backbone("image", seed=1)
    modalities = ("text", "image") if name.endswith("-ti") else ("text",)
    loaded = {"text": text, "image": image}
    torch.manual_seed(0)
    model = create_model(
        name,
        backbones=tuple(loaded[m].config.to_dict() for m in modalities),
        text_max_tokens=TOKENS,
        dropout=0.0,
        attention_dropout=0.0,
        **overrides,
    )
    for modality in modalities:
        model.load_backbone_weights(modality, loaded[modality].state_dict())
    return model, {m: loaded[m].state_dict() for m in modalities}


def training_loss(model: Recommender, generator: torch.Generator) -> torch.Tensor:
    """A next-item softmax over 6 items in 2 sequences of 3: every part of the model gets gradients."""
    items = model.encode_items(*model.random_item_inputs(6, generator))
    states = model.encode_users(items.view(2, 3, -1), torch.zeros(2, 3, dtype=torch.bool))
    return torch.nn.functional.cross_entropy(states @ items.t(), torch.tensor([1, 4]))


def changed_after_two_steps(model: Recommender) -> set[str]:
    """Names of the parameters two Adam steps change (two: LoRA's A gets no gradient while B is zero)."""
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimiser = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(2):
        optimiser.zero_grad()
        training_loss(model, generator).backward()
        optimiser.step()
    return {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}


@pytest.mark.parametrize("name", ["fft-ti", "adapter-ti", "lora-ti"])
def test_one_step_changes_exactly_what_should_train(name: str) -> None:
    model, _ = tiny_model(name)
    changed = changed_after_two_steps(model)
    names = {n for n, _ in model.named_parameters()}
    backbone = {n for n in names if n.startswith("backbones.")}
    added = {n for n in backbone if ADDED_WEIGHT.search(n)}
    assert names - backbone <= changed  # heads, fusion and SASRec train in every method
    if name == "fft-ti":
        # Every backbone tensor but the token-type embedding (all titles are one segment, so only
        # its row 0 gets a gradient and Adam moves that row: the tensor changes too).
        assert backbone <= changed
        return
    if name == "adapter-ti":
        assert added and all(".1.down." in n or ".1.up." in n for n in added)
        assert changed & backbone == added
        return
    lora_biases = {n for n in backbone if re.search(r"\.(query|value|q_proj|v_proj)\.base_layer\.bias$", n)}
    assert len(lora_biases) == 2 * 2 * 6  # query and value in the 6 layers of each tiny backbone
    assert added and all("lora_A" in n or "lora_B" in n for n in added)
    assert changed & backbone == added | lora_biases


def test_lora_starts_as_the_loaded_backbone() -> None:
    """LoRA's B starts at zero, so before training the adapted backbone computes exactly what the
    loaded one does: the loaded weights reach their renamed places (`base_layer`)."""
    model, _ = tiny_model("lora-t")
    text, _ = tiny_backbone("text", seed=0)
    inputs = model.random_item_inputs(3, torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = text.eval()(input_ids=inputs[0], attention_mask=inputs[1]).last_hidden_state[:, 0]
        (state,) = model.eval().modality_states(*inputs)
    torch.testing.assert_close(state, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", ["fft-t", "adapter-ti", "lora-ti"])
def test_config_round_trips_through_json(name: str) -> None:
    model, _ = tiny_model(name)
    assert config_from_dict(model.config.to_dict()) == model.config
    assert model.config.backbones[0]["hidden_size"] == 64


def test_a_backbone_from_another_architecture_is_refused() -> None:
    model, _ = tiny_model("adapter-t")
    image, _ = tiny_backbone("image", seed=1)
    with pytest.raises(ConfigError, match="has no place in the text backbone"):
        model.load_backbone_weights("text", image.state_dict())


def test_activation_checkpointing_gives_the_same_gradients() -> None:
    grads = []
    for checkpointing in (False, True):
        model, _ = tiny_model("fft-t", activation_checkpointing=checkpointing)
        model.train()
        training_loss(model, torch.Generator().manual_seed(0)).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_uncached_models_export_to_onnx(tmp_path) -> None:
    """The item encoder takes token ids and mask and matches PyTorch in onnxruntime; LoRA, the
    adaptation with the most machinery (peft's wrapped layers), on text stands for the others."""
    model, _ = tiny_model("lora-t")
    model.eval()
    exported = export_model(model, tmp_path)
    generator = torch.Generator().manual_seed(1)
    results = validate_grid(
        model,
        exported,
        item_cases(lambda batch: model.random_item_inputs(batch, generator)),
        user_cases(torch.randn(20, model.config.embedding_dim), model.config.max_seq_len),
    )
    assert max(r.max_abs_error for r in results) <= 1e-4
    assert exported.item_spec.input_names == ("text_input_ids", "text_attention_mask")


# --- through train.py: stored inputs, a run, its files ----------------------------------------


@pytest.mark.slow
def test_train_py_trains_an_uncached_model_from_stored_inputs(toy_root, cache_dir, tmp_path) -> None:
    """`adapter-ti` (small adapters) for one epoch on the small toy set: the titles and covers are
    prepared once into the input store, the run records it, and the run reopens with its inputs."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    from crossan.zoo.features.inputs import open_inputs
    from crossan.zoo.runs.run import open_run

    run_dir = tmp_path / "run"
    result = subprocess.run(
        [
            sys.executable,
            "train.py",
            "--preset",
            "adapter-ti",
            "--data",
            "microlens",
            "--data-root",
            str(toy_root),
            "--epochs",
            "1",
            "--batch-size",
            "64",
            "--set",
            "adapter_dim=8",
            "--run-dir",
            str(run_dir),
            "--cache-dir",
            str(cache_dir),
            "--json",
        ],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads(result.stdout.strip().splitlines()[-1])
    assert 0 <= metrics["test"]["NDCG@10"] <= 1
    config = json.loads((run_dir / "config.json").read_text())
    stored = config["features"]["backbones"]
    assert {m: stored[m]["stored"] for m in stored} == {"text": "inputs", "image": "inputs"}
    text = open_inputs(Path(stored["text"]["cache_file"]))
    image = open_inputs(Path(stored["image"]["cache_file"]))
    assert list(text) == ["input_ids", "attention_mask"] and text["input_ids"].dtype == torch.int32
    assert text["input_ids"].shape == (128, 30) and image["pixel_values"].shape == (128, 3, 32, 32)
    assert image["pixel_values"].dtype == torch.float16
    assert config["model"]["backbones"][0]["hidden_size"] == 64 and config["model"]["text_max_tokens"] == 30
    run = open_run(run_dir)
    inputs = run.features.gather(torch.tensor([0, 5]))
    assert [t.dtype for t in inputs] == [torch.int32, torch.int8, torch.float32]
    assert run.model.encode_items(*inputs).shape == (2, 64)
