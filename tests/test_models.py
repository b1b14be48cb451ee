"""Registry, presets, parameter counts, config round trips, adapter parameters and trainable-only updates."""

from __future__ import annotations

import dataclasses
import os

import pytest
import torch

import crossan
from crossan.kernels.gated_mix_down import triton_available
from crossan.zoo.layers.adapter import HoulsbyAdapter, TowerAdapters
from crossan.zoo.models import config_from_dict
from crossan.zoo.models.config import StoredFeatures


def trainable(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize(
    ("name", "overrides", "expected"),
    [
        ("crossan-tiva", {}, 24_733_200),
        ("iisan-e-tiva", {"adapter_dim": 512}, 30_889_784),
        ("iisan-e-tiva", {}, 58_432_824),
    ],
)
def test_trainable_parameters_match_paper(name: str, overrides: dict, expected: int) -> None:
    assert trainable(crossan.create_model(name, **overrides)) == expected


# The uncached baselines (stored backbone inputs) carry BERT-base and ViT-base by default;
# tests/test_end_to_end.py covers them with tiny backbones.
CACHED_PRESETS = [
    name for name in crossan.list_models() if crossan.preset_config(name).stored_features is StoredFeatures.STATES
]
SIDE_PRESETS = [name for name in CACHED_PRESETS if crossan.preset_config(name).backbone_modalities()]


def small_model(name: str, **overrides) -> crossan.zoo.models.Recommender:
    """The preset fitted to 30 items and 3 states of differing widths (so projections are used)."""
    config = crossan.preset_config(name, **overrides)
    shapes = {m: (3, 12 + 4 * i) for i, m in enumerate(config.backbone_modalities())}
    config = config.fit_to_data(30, shapes)
    if shapes:
        config = dataclasses.replace(config, adapter_dim=8, side_width=16)
    return crossan.build_model(config)


def item_inputs(model: crossan.zoo.models.Recommender, n: int) -> tuple[torch.Tensor, ...]:
    return model.random_item_inputs(n, torch.Generator().manual_seed(n))


@pytest.mark.parametrize("name", CACHED_PRESETS)
def test_every_preset_encodes_items_and_users(name: str) -> None:
    torch.manual_seed(0)
    model = small_model(name).eval()
    items = model.encode_items(*item_inputs(model, 7))
    assert items.shape == (7, 64) and torch.isfinite(items).all()
    padding = torch.tensor([[True, False, False], [False, False, False]])
    users = model.encode_users(items[:6].view(2, 3, 64), padding)
    assert users.shape == (2, 64) and torch.isfinite(users).all()
    assert model.item_input_names[0] in ("states_text", "item_rows")


@pytest.mark.parametrize("name", CACHED_PRESETS)
def test_config_round_trips_through_json_dict(name: str) -> None:
    config = small_model(name).config
    assert config_from_dict(config.to_dict()) == config


def isinstance_adapter_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The rule the model contract used before each model listed its own adapters: the
    parameters of every adapter module, in module order."""
    return [p for m in model.modules() if isinstance(m, (HoulsbyAdapter, TowerAdapters)) for p in m.parameters()]


@pytest.mark.parametrize("name", [*CACHED_PRESETS, "adapter-t", "adapter-ti"])
def test_each_model_lists_the_same_adapter_parameters_as_before(name: str) -> None:
    """Side networks list their side adapters, the ID model none, the end-to-end adapter
    models the adapters inserted into their backbones: exactly the parameters, in the order, of
    the old isinstance rule."""
    if name in CACHED_PRESETS:
        model = small_model(name)
    else:
        with torch.device("meta"):  # shapes only: BERT-base and ViT-base
            model = crossan.create_model(name)
    expected = isinstance_adapter_parameters(model)
    assert [id(p) for p in model.adapter_parameters()] == [id(p) for p in expected]
    assert bool(expected) == (name != "sasrec-id")


def test_create_model_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        crossan.create_model("nope")
    with pytest.raises(ValueError, match="unknown config field.*adaptor_dim"):
        crossan.create_model("crossan-tiva", adaptor_dim=3)
    with pytest.raises(ValueError, match="top_k"):
        crossan.create_model("crossan-ti", top_k=3)
    with pytest.raises(ValueError, match="IISAN needs at least two"):
        crossan.create_model("iisan-ti", modalities=("text",), backbone_widths=(768,))


@pytest.mark.parametrize("name", ["sasrec-id", "crossan-ti"])
def test_score_temperature_scores_cosines_over_the_temperature(name: str) -> None:
    """With `score_temperature` the items come out unit-length and the scores are the cosines
    over the temperature; each user's ranking is the dot product's over those items."""
    torch.manual_seed(0)
    dot_model = small_model(name).eval()
    cosine_model = crossan.build_model(dataclasses.replace(dot_model.config, score_temperature=0.05)).eval()
    cosine_model.load_state_dict(dot_model.state_dict())
    inputs = item_inputs(dot_model, 9)
    with torch.no_grad():
        raw, items = dot_model.encode_items(*inputs), cosine_model.encode_items(*inputs)
        users = torch.randn(4, 64)
        scores = cosine_model.scores(users, items)
    torch.testing.assert_close(items, raw / raw.norm(dim=1, keepdim=True))
    torch.testing.assert_close(items.norm(dim=1), torch.ones(9))
    cosines = torch.nn.functional.cosine_similarity(users.unsqueeze(1), raw.unsqueeze(0), dim=-1)
    torch.testing.assert_close(scores, cosines / 0.05, atol=1e-4, rtol=1e-5)
    assert torch.equal(scores.argsort(dim=1), dot_model.scores(users, items).argsort(dim=1))
    torch.testing.assert_close(dot_model.scores(users, raw), users @ raw.t())


def test_backbone_prior_adds_the_frozen_history_cosine() -> None:
    """With `backbone_prior_weight` every score gains `weight * cos(pooled history, candidate) / t`
    over the backbones' own last states, the history decayed by `backbone_prior_decay` per step
    back, while the learned part of the score is unchanged; the padding's values are ignored."""
    torch.manual_seed(0)
    plain = small_model("crossan-ti", score_temperature=0.2).eval()
    prior = crossan.build_model(
        dataclasses.replace(plain.config, backbone_prior_weight=0.7, backbone_prior_decay=0.5)
    ).eval()
    prior.load_state_dict(plain.state_dict())
    inputs = item_inputs(plain, 9)
    window = torch.tensor([[0, 0, 3, 5, 1], [2, 4, 6, 8, 9]])
    with torch.no_grad():
        items = prior.encode_items(*inputs)
        assert items.shape == (9, 64 + 12 + 16) == (9, prior.item_embedding_width)
        scores = prior.scores(prior.user_embeddings(prior.item_table(items), window), items)
        plain_items = plain.encode_items(*inputs)
        plain_scores = plain.scores(plain.user_embeddings(plain.item_table(plain_items), window), plain_items)
        states = prior.sequence_states(prior.item_table(items), window)
        table = prior.item_table(items)
        garbage = table[window].clone()
        garbage[0, :2] = 50.0
        users_from_garbage = prior.encode_users(garbage, window == 0)
    # The frozen embedding: each modality's last state at unit length, over sqrt(2) modalities.
    frozen = torch.cat([torch.nn.functional.normalize(x[:, -1], dim=-1) for x in inputs], dim=1) / 2**0.5
    history = torch.stack(
        [
            frozen[0] + 0.5 * frozen[4] + 0.25 * frozen[2],
            frozen[8] + 0.5 * frozen[7] + 0.25 * frozen[5] + 0.125 * frozen[3] + 0.0625 * frozen[1],
        ]
    )
    cosines = torch.nn.functional.normalize(history, dim=-1) @ frozen.t()
    torch.testing.assert_close(scores - plain_scores, 0.7 * cosines / 0.2, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(states[:, -1], prior.user_embeddings(table, window))
    torch.testing.assert_close(users_from_garbage, prior.user_embeddings(table, window))
    # At an earlier position the pooled history holds only the items up to it.
    torch.testing.assert_close(
        states[1, 1, 64:], 0.7 * torch.nn.functional.normalize(frozen[3] + 0.5 * frozen[1], dim=0)
    )


@pytest.mark.parametrize("training_weight", [0.5, 0.0])
def test_backbone_prior_inference_weight_applies_outside_training(training_weight: float) -> None:
    """`backbone_prior_inference_weight` replaces the training weight once the model is in eval
    mode (evaluation, export, serving); training keeps `backbone_prior_weight`, which may be 0
    (a prior added at inference only). The learned part of the user vector is the same in both."""
    torch.manual_seed(0)
    model = small_model(
        "crossan-t",
        score_temperature=0.1,
        backbone_prior_weight=training_weight,
        backbone_prior_inference_weight=2.0,
        dropout=0.0,
        attention_dropout=0.0,
    )
    assert (model.prior_training_weight, model.prior_inference_weight, model.has_prior) == (training_weight, 2.0, True)
    inputs = item_inputs(model, 9)
    window = torch.tensor([[0, 0, 3, 5, 1], [2, 4, 6, 8, 9]])
    with torch.no_grad():
        items = model.train().encode_items(*inputs)
        assert items.shape == (9, 64 + 12) == (9, model.item_embedding_width)
        training_users = model.user_embeddings(model.item_table(items), window)
        inference_users = model.eval().user_embeddings(model.item_table(items), window)
    torch.testing.assert_close(inference_users[:, :64], training_users[:, :64])
    torch.testing.assert_close(inference_users[:, 64:].norm(dim=1), torch.full((2,), 2.0))
    torch.testing.assert_close(training_users[:, 64:].norm(dim=1), torch.full((2,), training_weight))
    default = small_model("crossan-t", score_temperature=0.1, backbone_prior_weight=0.7)
    assert default.prior_inference_weight == 0.7


def test_backbone_prior_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="backbone_prior_weight needs cosine scores"):
        crossan.create_model("crossan-t", backbone_prior_weight=1.0)
    with pytest.raises(ValueError, match="backbone_prior_decay must lie in"):
        crossan.create_model("crossan-t", score_temperature=0.1, backbone_prior_weight=1.0, backbone_prior_decay=0.0)
    with pytest.raises(ValueError, match="backbone_prior_weight must be non-negative"):
        crossan.create_model("crossan-t", score_temperature=0.1, backbone_prior_weight=-1.0)
    with pytest.raises(ValueError, match="backbone_prior_inference_weight must be non-negative"):
        crossan.create_model("crossan-t", score_temperature=0.1, backbone_prior_inference_weight=-0.5)
    with pytest.raises(ValueError, match="needs cosine scores"):
        crossan.create_model("crossan-t", backbone_prior_inference_weight=1.0)


def test_negative_score_temperature_is_refused() -> None:
    with pytest.raises(ValueError, match="score_temperature must be non-negative"):
        crossan.create_model("crossan-t", score_temperature=-0.1)


def test_none_overrides_are_ignored() -> None:
    assert crossan.create_model("crossan-ti", adapter_dim=None).config.adapter_dim == 512


def test_crossan_mixes_other_modalities_and_indsan_does_not() -> None:
    """Changing the image states moves CROSSAN's text tower but not INDSAN's."""
    for name, should_change in (("crossan-ti", True), ("indsan-ti", False)):
        torch.manual_seed(0)
        model = crossan.create_model(name, backbone_widths=(16, 16), num_states=3, adapter_dim=8).eval()
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.1)
        text, image = torch.randn(5, 3, 16), torch.randn(5, 3, 16)
        before = model.tower_embeddings(text, image)[:, 0]
        after = model.tower_embeddings(text, image + 1.0)[:, 0]
        assert (not torch.allclose(before, after)) == should_change, name


def test_gate_parameter_counts() -> None:
    def gates(model: torch.nn.Module) -> int:
        return sum(
            p.numel() for n, p in model.named_parameters() if n.endswith(("logits", "theta")) and "fusion" not in n
        )

    assert gates(crossan.create_model("crossan-tiva")) == 140
    assert gates(crossan.create_model("iisan-e-tiva")) == 56
    assert gates(crossan.create_model("iisan-ti")) == 21


def perturbed(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter moved off its initial value (gates unsaturated: IISAN divides theta by 0.1)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            std = 0.05 if name.endswith("theta") else 0.5 if name.endswith("logits") else 0.1
            parameter.add_(std * torch.randn(parameter.shape, generator=generator))
    return model


def outputs_and_gradients(
    model, method: str, inputs: tuple[torch.Tensor, ...]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    outputs = getattr(model, method)(model.side_states(inputs))
    (outputs * outputs.sin()).float().sum().backward()
    return outputs.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


# float32: the batched layer sums in another order than the per-tower reference.
BATCHED_TOLERANCE = dict(atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", SIDE_PRESETS)
def test_batched_side_network_matches_per_tower_reference(name: str) -> None:
    """Forward and every gradient (gate logits, adapter weights and biases, projections) of the
    batched side layer against the per-tower formulation, on the same parameters."""
    model = perturbed(small_model(name).train())
    inputs = item_inputs(model, 9)
    outputs, grads = outputs_and_gradients(model, "tower_outputs", inputs)
    reference, reference_grads = outputs_and_gradients(model, "per_tower_outputs", inputs)
    assert outputs.shape == (model.config.num_towers, 9, 16)
    torch.testing.assert_close(outputs, reference, **BATCHED_TOLERANCE)
    assert grads.keys() == reference_grads.keys() and any("gates" in n for n in grads)
    for key, reference_grad in reference_grads.items():
        torch.testing.assert_close(
            grads[key], reference_grad, **BATCHED_TOLERANCE, msg=lambda m, key=key: f"{key}: {m}"
        )


@pytest.mark.skipif(
    not triton_available() or os.environ.get("TRITON_INTERPRET") != "1", reason="needs triton with TRITON_INTERPRET=1"
)
@pytest.mark.parametrize(
    ("dtype", "tolerance"),
    [(torch.float32, dict(atol=1e-5, rtol=1e-5)), (torch.float16, dict(atol=2e-2, rtol=2e-2))],
    ids=["fp32", "fp16"],
)
@pytest.mark.parametrize("name", ["crossan-tiva", "indsan-ti", "iisan-e-tiva"])
def test_triton_side_network_matches_per_tower_reference(name: str, dtype: torch.dtype, tolerance: dict) -> None:
    """The fused kernel path (Triton interpreter) against the per-tower reference; in fp16 the
    reference runs in fp16 too, so the tolerance covers two different fp16 roundings."""
    model = perturbed(small_model(name, mixer_backend="triton")).to(dtype)
    inputs = item_inputs(model, 9)
    outputs, grads = outputs_and_gradients(model, "tower_outputs", inputs)
    reference, reference_grads = outputs_and_gradients(model, "per_tower_outputs", inputs)
    torch.testing.assert_close(outputs, reference, **tolerance)
    for key, reference_grad in reference_grads.items():
        torch.testing.assert_close(grads[key], reference_grad, **tolerance, msg=lambda m, key=key: f"{key}: {m}")


def test_gate_table_reads_every_tower_layer_and_input() -> None:
    model = perturbed(small_model("iisan-e-tiva"))
    mixing, towers, sources = model.gate_table()
    assert mixing.shape == (3, 5, 9) and towers == ("text", "image", "video", "audio", "inter")
    assert sources[:4] == ("state:text", "state:image", "state:video", "state:audio") and sources[8] == "output:inter"
    intra = torch.sigmoid(model.side.gates.mixers["intra"].theta / 0.1)  # [L, M]
    torch.testing.assert_close(mixing[:, 1, 1], intra[:, 1])
    torch.testing.assert_close(mixing[:, 1, 5], 1 - intra[:, 1])
    torch.testing.assert_close(mixing[:, 4, 8], torch.ones(3))
    torch.testing.assert_close(mixing[:, 4, :4].sum(-1), torch.ones(3))
    assert not mixing.requires_grad


def test_optimizer_step_changes_only_trainable_parameters() -> None:
    """A frozen backbone feeding the side network: one step moves the side network only."""
    from crossan.zoo.backbones import BackboneSpec, StateExtractor, load_backbone

    backbone = load_backbone(BackboneSpec("text", "tiny"))
    extractor = StateExtractor(backbone, side_layers=6)
    frozen_before = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    model = crossan.create_model("crossan-t", backbone_widths=(backbone.width,), num_states=7, adapter_dim=16)
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
    from crossan.zoo.training.checkpoint import save_weights, write_json

    model = small_model("crossan-tiva").eval()
    write_json(tmp_path / "config.json", {"model": model.config.to_dict()})
    save_weights(tmp_path / "model.safetensors", model.state_dict())
    loaded = crossan.load_model(tmp_path)
    inputs = item_inputs(model, 4)
    torch.testing.assert_close(loaded.encode_items(*inputs), model.encode_items(*inputs), atol=0, rtol=0)
    assert dataclasses.asdict(loaded.config) == dataclasses.asdict(model.config)


def test_cold_scale_multiplies_the_prior_of_items_outside_training_only() -> None:
    """`backbone_prior_cold_scale` multiplies the frozen part of the items that never occur in
    training (and of new items, row -1) outside training: their prior score grows by that factor,
    every other score and every user vector stays as without it (the user side takes each history
    item's frozen part back to unit length), and training scores are untouched."""
    torch.manual_seed(0)
    settings = {"score_temperature": 0.1, "backbone_prior_weight": 0.5, "backbone_prior_inference_weight": 1.5}
    plain = small_model("crossan-t", **settings, dropout=0.0, attention_dropout=0.0)
    cold = crossan.build_model(dataclasses.replace(plain.config, backbone_prior_cold_scale=3.0))
    missing, unexpected = cold.load_state_dict(plain.state_dict(), strict=False)
    assert (missing, unexpected) == (["cold_items.seen"], [])
    assert cold.item_input_names == (*plain.item_input_names, "item_rows")
    seen = torch.arange(30) % 3 != 0
    cold.mark_trained_items(seen)
    (states,) = item_inputs(plain, 9)
    rows = torch.tensor([0, 1, 2, 3, 4, 5, -1, 6, 9])
    factor = torch.tensor([3.0, 1, 1, 3, 1, 1, 3, 3, 3]).unsqueeze(1)
    window = torch.tensor([[0, 0, 3, 5, 1], [2, 4, 6, 8, 9]])
    with torch.no_grad():
        for mode in ("train", "eval"):
            plain.train(mode == "train")
            cold.train(mode == "train")
            plain_items, cold_items = plain.encode_items(states), cold.encode_items(states, rows)
            expected = factor if mode == "eval" else torch.ones(9, 1)
            torch.testing.assert_close(cold_items[:, :64], plain_items[:, :64])
            torch.testing.assert_close(cold_items[:, 64:], plain_items[:, 64:] * expected)
            plain_users = plain.user_embeddings(plain.item_table(plain_items), window)
            cold_users = cold.user_embeddings(cold.item_table(cold_items), window)
            torch.testing.assert_close(cold_users, plain_users)
        learned = plain.scores(plain_users[:, :64], plain_items[:, :64])
        plain_prior = plain.scores(plain_users, plain_items) - learned
        cold_scores = cold.scores(cold_users, cold_items)
    torch.testing.assert_close(cold_scores, learned + plain_prior * factor.t(), atol=1e-4, rtol=1e-5)
    assert float(plain_prior.abs().min()) > 1e-3, "the prior must move every score, or the check means nothing"


def test_cold_scale_settings_are_checked() -> None:
    prior = {"score_temperature": 0.1, "backbone_prior_weight": 0.5}
    with pytest.raises(ValueError, match="backbone_prior_cold_scale must be positive"):
        crossan.preset_config("crossan-t", **prior, backbone_prior_cold_scale=0.0)
    with pytest.raises(ValueError, match="must be a number, null or 'auto', got 'more'"):
        crossan.preset_config("crossan-t", **prior, backbone_prior_cold_scale="more")
    with pytest.raises(ValueError, match="backbone_prior_cold_grid must hold"):
        crossan.preset_config(
            "crossan-t", **prior, backbone_prior_cold_scale="auto", backbone_prior_cold_grid=(1.0, 0.0)
        )
    with pytest.raises(ValueError, match="which is off"):
        crossan.preset_config("crossan-t", score_temperature=0.1, backbone_prior_cold_scale=2.0)
    with pytest.raises(ValueError, match="needs num_items"):
        crossan.create_model("crossan-t", **prior, backbone_prior_cold_scale=2.0)
    auto = small_model("crossan-t", **prior, backbone_prior_cold_scale="auto")
    assert auto.validation_choices() == {"backbone_prior_cold_scale": auto.config.backbone_prior_cold_grid}
    assert auto.prior_cold_scale == 1.0 and auto.config.reads_item_rows
