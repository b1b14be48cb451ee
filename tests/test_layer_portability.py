"""Every public module of `crossan.zoo.layers` works on its own, as another project would use it:
forward and backward, `torch.jit.trace`, `torch.jit.script`, and ONNX export checked in
onnxruntime at a batch size other than the one it was exported with."""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

import crossan.zoo.layers as layers
from crossan.zoo.layers import (
    ConcatFusion,
    DynamicGatedFusion,
    GatedAdapterLayer,
    GatedCrossModalMixer,
    GateGroup,
    HoulsbyAdapter,
    ItemIdEmbedding,
    MOMEFRouter,
    SASRec,
    SideGates,
    SideNetwork,
    SigmoidGatedMixer,
    StaticGatedFusion,
    TowerAdapters,
    TowerHead,
)

WIDTH, DIM, MODALITIES, LENGTH = 6, 8, 3, 4
EXPORT_BATCH, CHECK_BATCH = 5, 3
TOLERANCE = 2e-6  # float32: measured at most 7.2e-7 (ONNX), a few units in the last place


@dataclass(frozen=True)
class Case:
    """How to build a module at small sizes and make its inputs for a batch of `n`."""

    build: Callable[[], nn.Module]
    inputs: Callable[[int], tuple[torch.Tensor, ...]]
    batch_axes: tuple[int | None, ...]  # per input: the axis that is the batch, None for none


def _side_gates() -> SideGates:
    mixer = GatedCrossModalMixer(1 + MODALITIES, gate_shape=(2, MODALITIES))
    columns = tuple((m, *(MODALITIES + k for k in range(MODALITIES))) for m in range(MODALITIES))
    return SideGates(
        [f"m{m}" for m in range(MODALITIES)],
        [f"m{m}" for m in range(MODALITIES)],
        2,
        [GateGroup("cross_modal", mixer, tuple(range(MODALITIES)), columns)],
    )


def _with_random_parameters(module: nn.Module) -> nn.Module:
    """Move every parameter off its (often zero) initial value, so gates and outputs are not trivial."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(0.3 * torch.randn(parameter.shape, generator=generator))
    return module


def _padding(n: int) -> torch.Tensor:
    mask = torch.zeros(n, LENGTH, dtype=torch.bool)
    mask[0, :2] = True
    return mask


def _item_ids() -> ItemIdEmbedding:
    module = ItemIdEmbedding(10, DIM)
    module.mark_seen(torch.arange(10) % 3 != 0)
    return module


def _rand(*shape: int) -> torch.Tensor:
    return torch.randn(*shape)


CASES: dict[str, Case] = {
    "ConcatFusion": Case(lambda: ConcatFusion(MODALITIES, DIM), lambda n: (_rand(n, MODALITIES, DIM),), (0,)),
    "DynamicGatedFusion": Case(
        lambda: DynamicGatedFusion(MODALITIES, DIM), lambda n: (_rand(n, MODALITIES, DIM),), (0,)
    ),
    "GatedAdapterLayer": Case(
        lambda: GatedAdapterLayer(GatedCrossModalMixer(3), HoulsbyAdapter(WIDTH, 4, "gelu")),
        lambda n: (_rand(3, n, WIDTH),),
        (1,),
    ),
    "GatedCrossModalMixer": Case(lambda: GatedCrossModalMixer(3), lambda n: (_rand(3, n, WIDTH),), (1,)),
    "HoulsbyAdapter": Case(lambda: HoulsbyAdapter(WIDTH, 4), lambda n: (_rand(n, WIDTH),), (0,)),
    "ItemIdEmbedding": Case(_item_ids, lambda n: (torch.arange(n) % 11 - 1,), (0,)),
    "MOMEFRouter": Case(lambda: MOMEFRouter(MODALITIES, DIM, top_k=2), lambda n: (_rand(n, MODALITIES, DIM),), (0,)),
    "SASRec": Case(
        lambda: SASRec(
            dim=DIM, max_len=LENGTH, num_blocks=1, num_heads=2, ffn_dim=16, dropout=0.0, attention_dropout=0.0
        ),
        lambda n: (_rand(n, LENGTH, DIM), _padding(n)),
        (0, 0),
    ),
    "SideGates": Case(_side_gates, lambda n: (), ()),
    "SideNetwork": Case(
        lambda: SideNetwork(_side_gates(), WIDTH, 4, "gelu", backend="torch"),
        lambda n: (_rand(2, MODALITIES, n, WIDTH),),
        (2,),
    ),
    "SigmoidGatedMixer": Case(lambda: SigmoidGatedMixer(0.5), lambda n: (_rand(2, n, WIDTH),), (1,)),
    "StaticGatedFusion": Case(lambda: StaticGatedFusion(MODALITIES, DIM), lambda n: (_rand(n, MODALITIES, DIM),), (0,)),
    "TowerAdapters": Case(lambda: TowerAdapters(MODALITIES, WIDTH, 4), lambda n: (_rand(MODALITIES, n, WIDTH),), (1,)),
    "TowerHead": Case(lambda: TowerHead(WIDTH, DIM), lambda n: (_rand(n, WIDTH),), (0,)),
}


def public_modules() -> set[str]:
    return {
        name
        for name in layers.__all__
        if inspect.isclass(getattr(layers, name)) and issubclass(getattr(layers, name), nn.Module)
    }


def test_every_public_module_has_a_case() -> None:
    assert public_modules() == set(CASES)


def build(name: str) -> tuple[nn.Module, Case]:
    torch.manual_seed(0)
    case = CASES[name]
    return _with_random_parameters(case.build()).eval(), case


def max_error(expected: torch.Tensor, actual: torch.Tensor | np.ndarray) -> float:
    return float((expected.detach() - torch.as_tensor(actual)).abs().max())


@pytest.mark.parametrize("name", sorted(CASES))
def test_forward_and_backward(name: str) -> None:
    module, case = build(name)
    inputs = case.inputs(CHECK_BATCH)
    inputs = tuple(x.requires_grad_() if x.is_floating_point() else x for x in inputs)
    output = module(*inputs)
    assert torch.isfinite(output).all()
    output.square().sum().backward()
    grads = [p.grad for p in module.parameters()] + [x.grad for x in inputs if x.is_floating_point()]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(float(g.abs().sum()) > 0 for g in grads)


@pytest.mark.parametrize("name", sorted(CASES))
def test_trace_and_script_match_eager_at_another_batch(name: str) -> None:
    module, case = build(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module, case.inputs(EXPORT_BATCH))
        scripted = torch.jit.script(module)
    inputs = case.inputs(CHECK_BATCH)
    expected = module(*inputs)
    assert max_error(expected, traced(*inputs)) <= TOLERANCE
    assert max_error(expected, scripted(*inputs)) <= TOLERANCE


@pytest.mark.parametrize("name", sorted(CASES))
def test_onnx_export_matches_eager_at_another_batch(name: str, tmp_path: Path) -> None:
    module, case = build(name)
    batch = torch.export.Dim("batch", min=1, max=1024)
    shapes = tuple({axis: batch} if axis is not None else None for axis in case.batch_axes)
    path = tmp_path / f"{name}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, case.inputs(EXPORT_BATCH), str(path), dynamo=True, dynamic_shapes=shapes or None, verbose=False
        )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inputs = case.inputs(CHECK_BATCH)
    feeds = {arg.name: x.numpy() for arg, x in zip(session.get_inputs(), inputs, strict=True)}
    (actual,) = session.run(None, feeds)
    assert max_error(module(*inputs), actual) <= TOLERANCE
