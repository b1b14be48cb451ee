"""Layers against hand-computed references."""
from __future__ import annotations

import pytest
import torch

from zoo.layers import (ConcatFusion, DynamicGatedFusion, GatedCrossModalMixer, HoulsbyAdapter, MOMEFRouter, SASRec,
                        SigmoidGatedMixer, StaticGatedFusion)
from zoo.layers.side_layer import GatedAdapterLayer

ATOL = 1e-6


def test_adapter_matches_formula_and_shapes() -> None:
    torch.manual_seed(0)
    adapter = HoulsbyAdapter(width=12, hidden_dim=20, activation="gelu")  # r > W is allowed
    x = torch.randn(5, 12)
    expected = x + torch.nn.functional.gelu(x @ adapter.down.weight.t() + adapter.down.bias) @ adapter.up.weight.t()
    expected = expected + adapter.up.bias
    torch.testing.assert_close(adapter(x), expected, atol=ATOL, rtol=0)
    assert adapter.down.weight.shape == (20, 12) and adapter.up.weight.shape == (12, 20)
    assert torch.all(adapter.down.bias == 0) and torch.all(adapter.up.bias == 0)
    assert 0.005 < adapter.down.weight.std().item() < 0.015  # N(0, 0.01) init
    assert sum(p.numel() for p in HoulsbyAdapter(768, 512).parameters()) == 787_712


def test_mixer_weights_sum_to_one_and_mix_matches_hand_computation() -> None:
    mixer = GatedCrossModalMixer(num_inputs=3)
    with torch.no_grad():
        mixer.logits.copy_(torch.tensor([0.5, -1.0, 2.0]))
    inputs = torch.randn(3, 4, 6)
    weights = torch.exp(mixer.logits) / torch.exp(mixer.logits).sum()
    torch.testing.assert_close(mixer.gate_weights().sum(), torch.tensor(1.0))
    expected = weights[0] * inputs[0] + weights[1] * inputs[1] + weights[2] * inputs[2]
    torch.testing.assert_close(mixer(inputs), expected, atol=ATOL, rtol=0)


def test_mixer_rejects_wrong_number_of_inputs() -> None:
    with pytest.raises(ValueError, match="expects 3 stacked inputs"):
        GatedCrossModalMixer(3)(torch.randn(2, 4, 6))
    with pytest.raises(ValueError, match="backend"):
        GatedCrossModalMixer(3, backend="cuda-magic")


def test_sigmoid_mixer_is_iisan_gate() -> None:
    mixer = SigmoidGatedMixer(temperature=0.1)
    with torch.no_grad():
        mixer.theta.fill_(0.03)
    a, b = torch.randn(4, 6), torch.randn(4, 6)
    g = torch.sigmoid(torch.tensor(0.03) / 0.1)
    torch.testing.assert_close(mixer(torch.stack([a, b])), g * a + (1 - g) * b, atol=ATOL, rtol=0)
    assert sum(p.numel() for p in mixer.parameters()) == 1


def test_gated_adapter_layer_equals_mix_then_adapter() -> None:
    torch.manual_seed(1)
    layer = GatedAdapterLayer(GatedCrossModalMixer(4), HoulsbyAdapter(8, 16))
    with torch.no_grad():
        layer.mixer.logits.normal_()
    inputs = torch.randn(4, 5, 8)
    torch.testing.assert_close(layer(inputs), layer.adapter(layer.mixer(inputs)), atol=1e-5, rtol=1e-5)


def test_momef_keeps_exactly_k_with_weights_summing_to_one() -> None:
    torch.manual_seed(2)
    router = MOMEFRouter(num_modalities=4, dim=8, top_k=2)
    towers = torch.randn(32, 4, 8)
    weights = router.routing_weights(towers)
    assert torch.all((weights > 0).sum(dim=1) == 2)
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(32))
    scores = router.gate(towers.flatten(1))
    top = scores.topk(2, dim=1)
    # The kept modalities are the two highest scores, weighted by a softmax over them.
    torch.testing.assert_close(weights.gather(1, top.indices), torch.softmax(top.values, dim=1))
    expected = torch.stack([sum(weights[n, m] * router.experts[m](towers[n, m]) for m in range(4))
                            for n in range(32)])
    torch.testing.assert_close(router(towers), expected, atol=1e-5, rtol=1e-5)
    # Routing is per item: not every item keeps the same pair.
    assert len({tuple(sorted(t.tolist())) for t in top.indices}) > 1


def test_momef_rejects_k_out_of_range() -> None:
    with pytest.raises(ValueError, match="top_k"):
        MOMEFRouter(2, 8, top_k=3)


def test_fusion_ablations_match_formulas() -> None:
    torch.manual_seed(3)
    towers = torch.randn(6, 3, 8)
    concat = ConcatFusion(3, 8)
    torch.testing.assert_close(concat(towers), concat.proj(torch.cat([towers[:, 0], towers[:, 1], towers[:, 2]], 1)))
    static = StaticGatedFusion(3, 8)
    with torch.no_grad():
        static.logits.copy_(torch.tensor([1.0, 0.0, -1.0]))
    w = torch.softmax(static.logits, 0)
    torch.testing.assert_close(static(towers), w[0] * towers[:, 0] + w[1] * towers[:, 1] + w[2] * towers[:, 2])
    dynamic = DynamicGatedFusion(3, 8)
    w = torch.softmax(dynamic.gate(towers.flatten(1)), dim=1)
    torch.testing.assert_close(dynamic(towers), (w.unsqueeze(-1) * towers).sum(1))


def _sasrec() -> SASRec:
    torch.manual_seed(4)
    return SASRec(dim=16, max_len=6, num_blocks=2, num_heads=2, ffn_dim=32).eval()


def test_sasrec_is_causal() -> None:
    model = _sasrec()
    items = torch.randn(2, 6, 16)
    padding = torch.zeros(2, 6, dtype=torch.bool)
    changed = items.clone()
    changed[:, 4:] = torch.randn(2, 2, 16)
    before, after = model(items, padding), model(changed, padding)
    torch.testing.assert_close(before[:, :4], after[:, :4], atol=1e-6, rtol=0)
    assert not torch.allclose(before[:, 4:], after[:, 4:])


def test_sasrec_user_vector_ignores_left_padding() -> None:
    model = _sasrec()
    items = torch.randn(1, 3, 16)
    short = model.user_vector(items, torch.zeros(1, 3, dtype=torch.bool))
    padded_items = torch.cat([torch.randn(1, 3, 16) * 50, items], dim=1)  # garbage under the padding
    padding = torch.tensor([[True, True, True, False, False, False]])
    torch.testing.assert_close(model.user_vector(padded_items, padding), short, atol=1e-5, rtol=1e-5)


def test_sasrec_fully_padded_rows_stay_finite() -> None:
    model = _sasrec()
    out = model(torch.randn(2, 6, 16), torch.ones(2, 6, dtype=torch.bool))
    assert torch.isfinite(out).all()


def test_sasrec_parameter_count_matches_paper() -> None:
    assert sum(p.numel() for p in SASRec().parameters()) == 100_224
