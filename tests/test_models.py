"""Registry, presets, parameter counts, config round trips and trainable-only updates."""
from __future__ import annotations

import dataclasses

import pytest
import torch

import zoo
from zoo.models.config import SideNetworkConfig
from zoo.registry import config_from_dict


def trainable(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize(("name", "overrides", "expected"), [
    ("crossan-tiva", {}, 24_733_200),
    ("iisan-e-tiva", {"adapter_dim": 512}, 30_889_784),
    ("iisan-e-tiva", {}, 58_432_824),
])
def test_trainable_parameters_match_paper(name: str, overrides: dict, expected: int) -> None:
    assert trainable(zoo.create_model(name, **overrides)) == expected


def small_model(name: str) -> zoo.models.Recommender:
    config = zoo.preset_config(name)
    if isinstance(config, SideNetworkConfig):
        widths = tuple(12 + 4 * i for i in range(len(config.modalities)))  # differing widths -> projections
        return zoo.create_model(name, backbone_widths=widths, num_states=3, adapter_dim=8, side_width=16)
    return zoo.create_model(name, num_items=30)


def item_inputs(model: zoo.models.Recommender, n: int) -> tuple[torch.Tensor, ...]:
    config = model.config
    if isinstance(config, SideNetworkConfig):
        return tuple(torch.randn(n, config.num_states, w) for w in config.backbone_widths)
    return (torch.arange(n) % config.num_items,)


@pytest.mark.parametrize("name", zoo.list_models())
def test_every_preset_encodes_items_and_users(name: str) -> None:
    torch.manual_seed(0)
    model = small_model(name).eval()
    items = model.encode_items(*item_inputs(model, 7))
    assert items.shape == (7, 64) and torch.isfinite(items).all()
    padding = torch.tensor([[True, False, False], [False, False, False]])
    users = model.encode_users(items[:6].view(2, 3, 64), padding)
    assert users.shape == (2, 64) and torch.isfinite(users).all()
    assert model.item_input_names[0] in ("states_text", "item_rows")


@pytest.mark.parametrize("name", zoo.list_models())
def test_config_round_trips_through_json_dict(name: str) -> None:
    config = small_model(name).config
    assert config_from_dict(config.to_dict()) == config


def test_create_model_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        zoo.create_model("nope")
    with pytest.raises(ValueError, match="unknown config field.*adaptor_dim"):
        zoo.create_model("crossan-tiva", adaptor_dim=3)
    with pytest.raises(ValueError, match="top_k"):
        zoo.create_model("crossan-ti", top_k=3)
    with pytest.raises(ValueError, match="IISAN needs at least two"):
        zoo.create_model("iisan-ti", modalities=("text",), backbone_widths=(768,))


def test_none_overrides_are_ignored() -> None:
    assert zoo.create_model("crossan-ti", adapter_dim=None).config.adapter_dim == 512


def test_crossan_mixes_other_modalities_and_indsan_does_not() -> None:
    """Changing the image states moves CROSSAN's text tower but not INDSAN's."""
    for name, should_change in (("crossan-ti", True), ("indsan-ti", False)):
        torch.manual_seed(0)
        model = zoo.create_model(name, backbone_widths=(16, 16), num_states=3, adapter_dim=8).eval()
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.1)
        text, image = torch.randn(5, 3, 16), torch.randn(5, 3, 16)
        before = model.tower_embeddings(text, image)[:, 0]
        after = model.tower_embeddings(text, image + 1.0)[:, 0]
        assert (not torch.allclose(before, after)) == should_change, name


def test_gate_parameter_counts() -> None:
    def gates(model: torch.nn.Module) -> int:
        return sum(p.numel() for n, p in model.named_parameters() if n.endswith(("logits", "theta"))
                   and "fusion" not in n)

    assert gates(zoo.create_model("crossan-tiva")) == 140
    assert gates(zoo.create_model("iisan-e-tiva")) == 56
    assert gates(zoo.create_model("iisan-ti")) == 21


def test_optimizer_step_changes_only_trainable_parameters() -> None:
    """A frozen backbone feeding the side network: one step moves the side network only."""
    from zoo.backbones import BackboneSpec, StateExtractor, load_backbone

    backbone = load_backbone(BackboneSpec("text", "tiny"))
    extractor = StateExtractor(backbone, side_layers=6)
    frozen_before = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    model = zoo.create_model("crossan-t", backbone_widths=(backbone.width,), num_states=7, adapter_dim=16)
    trainable_before = {k: v.clone() for k, v in model.named_parameters()}
    assert not any(p.requires_grad for p in backbone.model.parameters())
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    states = extractor.encode(["red fox gadget", "blue soup device", "green pasta thing"])
    items = model.encode_items(states)
    loss = model.encode_users(items.unsqueeze(0), torch.zeros(1, 3, dtype=torch.bool)).pow(2).sum()
    loss.backward()
    optimizer.step()
    for key, value in backbone.model.state_dict().items():
        assert torch.equal(value, frozen_before[key]), f"frozen {key} changed"
    changed = [k for k, p in model.named_parameters() if not torch.equal(p, trainable_before[k])]
    with_grad = [k for k, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0]
    assert set(changed) == set(with_grad) and len(changed) > 0.9 * len(trainable_before)


def test_load_model_round_trip(tmp_path) -> None:
    from zoo.training.checkpoint import save_weights, write_json

    model = small_model("crossan-tiva").eval()
    write_json(tmp_path / "config.json", {"model": model.config.to_dict()})
    save_weights(tmp_path / "model.safetensors", model.state_dict())
    loaded = zoo.load_model(tmp_path)
    inputs = item_inputs(model, 4)
    torch.testing.assert_close(loaded.encode_items(*inputs), model.encode_items(*inputs), atol=0, rtol=0)
    assert dataclasses.asdict(loaded.config) == dataclasses.asdict(model.config)
