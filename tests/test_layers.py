"""Layers against hand-computed references."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

from crossan.zoo.layers import (
    ConcatFusion,
    DynamicGatedFusion,
    GatedAdapterLayer,
    GatedCrossModalMixer,
    GateGroup,
    HoulsbyAdapter,
    MOMEFRouter,
    SASRec,
    SideGates,
    SideNetwork,
    SigmoidGatedMixer,
    StaticGatedFusion,
    TowerAdapters,
    TowerHead,
)

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
    with pytest.raises(ValueError, match="gate_weights"):
        GatedCrossModalMixer(3, gate_shape=(2, 4))(torch.randn(3, 4, 6))


def test_mixer_with_gate_shape_holds_one_softmax_per_leading_index() -> None:
    mixer = GatedCrossModalMixer(5, gate_shape=(7, 4))
    assert mixer.logits.shape == (7, 4, 5) and not mixer.logits.any()
    with torch.no_grad():
        mixer.logits.normal_()
    weights = mixer.gate_weights()
    torch.testing.assert_close(weights[3, 2], torch.softmax(mixer.logits[3, 2], 0))
    torch.testing.assert_close(weights.sum(-1), torch.ones(7, 4))
    sigmoid = SigmoidGatedMixer(0.1, gate_shape=(7, 2))
    with torch.no_grad():
        sigmoid.theta.normal_(std=0.1)
    g = torch.sigmoid(sigmoid.theta / 0.1)
    torch.testing.assert_close(sigmoid.gate_weights(), torch.stack([g, 1 - g], -1))


def test_sigmoid_mixer_is_iisan_gate() -> None:
    mixer = SigmoidGatedMixer(temperature=0.1)
    with torch.no_grad():
        mixer.theta.fill_(0.03)
    a, b = torch.randn(4, 6), torch.randn(4, 6)
    g = torch.sigmoid(torch.tensor(0.03) / 0.1)
    torch.testing.assert_close(mixer(torch.stack([a, b])), g * a + (1 - g) * b, atol=ATOL, rtol=0)
    assert sum(p.numel() for p in mixer.parameters()) == 1


def test_gated_adapter_layer_matches_formula() -> None:
    torch.manual_seed(1)
    layer = GatedAdapterLayer(GatedCrossModalMixer(4), HoulsbyAdapter(8, 16))
    with torch.no_grad():
        layer.mixer.logits.normal_()
        layer.adapter.up.weight.normal_()
    inputs = torch.randn(4, 5, 8)
    weights = torch.softmax(layer.mixer.logits, 0)
    x = sum(weights[k] * inputs[k] for k in range(4))
    down, up = layer.adapter.down, layer.adapter.up
    expected = x + torch.relu(x @ down.weight.t() + down.bias) @ up.weight.t() + up.bias
    torch.testing.assert_close(layer(inputs), expected, atol=1e-5, rtol=1e-5)


def test_tower_adapters_are_houlsby_adapters_per_tower() -> None:
    """Forward and every gradient of the stacked adapters equal T separate HoulsbyAdapters."""
    torch.manual_seed(5)
    adapters = TowerAdapters(3, width=12, hidden_dim=20, activation="gelu")
    with torch.no_grad():
        for parameter in adapters.parameters():
            parameter.normal_(std=0.3)
    x = torch.randn(3, 7, 12)
    single = HoulsbyAdapter(12, 20, "gelu")
    batched = adapters(x)
    per_tower = torch.stack([functional_call(single, adapters.tower_parameters(t), (x[t],)) for t in range(3)])
    torch.testing.assert_close(batched, per_tower, atol=1e-5, rtol=1e-5)
    grads = torch.autograd.grad((batched * batched.cos()).sum(), list(adapters.parameters()))
    grads_ref = torch.autograd.grad((per_tower * per_tower.cos()).sum(), list(adapters.parameters()))
    for name, got, want in zip([n for n, _ in adapters.named_parameters()], grads, grads_ref, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5, msg=name)
    assert adapters.down_weight.shape == (3, 12, 20) and adapters.up_weight.shape == (3, 20, 12)
    assert sum(p.numel() for p in TowerAdapters(4, 768, 512).parameters()) == 4 * 787_712


def test_tower_head_equals_its_two_linear_maps() -> None:
    torch.manual_seed(6)
    head = TowerHead(16, 4)
    z = torch.randn(9, 16)
    torch.testing.assert_close(head(z), head.out(head.hidden(z)), atol=1e-5, rtol=1e-5)
    assert sum(p.numel() for p in TowerHead(768, 64).parameters()) == 590_592 + 49_216


def crossan_gates(num_layers: int = 2, towers: int = 3) -> SideGates:
    columns = tuple((t, *(towers + k for k in range(towers))) for t in range(towers))
    mixer = GatedCrossModalMixer(1 + towers, gate_shape=(num_layers, towers))
    names = tuple(f"m{t}" for t in range(towers))
    return SideGates(names, names, num_layers, [GateGroup("cross", mixer, tuple(range(towers)), columns)])


def test_side_gates_place_each_tower_softmax_in_its_row() -> None:
    gates = crossan_gates()
    with torch.no_grad():
        gates.mixers["cross"].logits.normal_()
    mixing = gates.mixing()
    weights = gates.mixers["cross"].gate_weights()
    assert mixing.shape == (2, 3, 6)
    for t in range(3):
        expected = torch.zeros(2, 6)
        expected[:, t] = weights[:, t, 0]
        expected[:, 3:] = weights[:, t, 1:]
        torch.testing.assert_close(mixing[:, t], expected)
    assert gates.pattern.tolist() == [
        [True, False, False, True, True, True],
        [False, True, False, True, True, True],
        [False, False, True, True, True, True],
    ]
    assert gates.source_names() == ("state:m0", "state:m1", "state:m2", "output:m0", "output:m1", "output:m2")


def test_side_gates_fixed_entries_and_errors() -> None:
    mixer = GatedCrossModalMixer(2, gate_shape=(3, 1))
    gates = SideGates(("a", "b"), ("a", "inter"), 3, [GateGroup("g", mixer, (0,), ((0, 1),))], fixed=[(1, 3, 1.0)])
    mixing = gates.mixing()
    torch.testing.assert_close(mixing[:, 1], torch.tensor([[0.0, 0.0, 0.0, 1.0]] * 3))
    torch.testing.assert_close(mixing[:, 0, :2], torch.full((3, 2), 0.5))
    with pytest.raises(ValueError, match="do not match"):
        SideGates(("a",), ("a",), 4, [GateGroup("g", GatedCrossModalMixer(2, gate_shape=(3, 1)), (0,), ((0, 1),))])
    with pytest.raises(ValueError, match="columns must lie"):
        SideGates(("a",), ("a",), 3, [GateGroup("g", GatedCrossModalMixer(2, gate_shape=(3, 1)), (0,), ((0, 5),))])
    with pytest.raises(ValueError, match="at least one source"):
        SideGates(("a",), ("a", "b"), 3, [GateGroup("g", GatedCrossModalMixer(2, gate_shape=(3, 1)), (0,), ((0, 1),))])


def test_side_network_layer_by_layer() -> None:
    """Each layer's outputs are the gated mix of that layer's sources through the tower's adapter."""
    torch.manual_seed(7)
    network = SideNetwork(crossan_gates(), width=8, adapter_dim=6, activation="gelu")
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.normal_(std=0.3)
    states = torch.randn(2, 3, 5, 8)
    mixing = network.gates.mixing()
    previous = torch.zeros(3, 5, 8)
    for layer, adapters in enumerate(network.layers):
        sources = torch.cat([states[layer], previous])
        x = torch.einsum("ts,snw->tnw", mixing[layer], sources)
        previous = torch.stack(
            [functional_call(HoulsbyAdapter(8, 6, "gelu"), adapters.tower_parameters(t), (x[t],)) for t in range(3)]
        )
    torch.testing.assert_close(network(states), previous, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match=r"\[L, M, N, W\]"):
        network(states[:1])


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
    expected = torch.stack([sum(weights[n, m] * router.experts[m](towers[n, m]) for m in range(4)) for n in range(32)])
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


def test_sasrec_last_state_ignores_left_padding() -> None:
    """The newest position's state (the user vector `Recommender.encode_users` takes) is the same
    with left padding, whatever lies under it."""
    model = _sasrec()
    items = torch.randn(1, 3, 16)
    short = model(items, torch.zeros(1, 3, dtype=torch.bool))[:, -1]
    padded_items = torch.cat([torch.randn(1, 3, 16) * 50, items], dim=1)  # garbage under the padding
    padding = torch.tensor([[True, True, True, False, False, False]])
    torch.testing.assert_close(model(padded_items, padding)[:, -1], short, atol=1e-5, rtol=1e-5)


def test_sasrec_fully_padded_rows_stay_finite() -> None:
    model = _sasrec()
    out = model(torch.randn(2, 6, 16), torch.ones(2, 6, dtype=torch.bool))
    assert torch.isfinite(out).all()


def test_sasrec_parameter_count_matches_paper() -> None:
    assert sum(p.numel() for p in SASRec().parameters()) == 100_224
