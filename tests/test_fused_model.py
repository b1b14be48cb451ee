"""A CROSSAN training step on the fused Triton path equals the PyTorch reference path.

Runs the Triton kernels in the interpreter on the CPU (TRITON_INTERPRET=1, set in conftest).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from rich.console import Console

import crossan
from crossan.kernels.gated_mix_down import triton_available
from crossan.zoo.data import read_microlens
from crossan.zoo.features.store import ItemFeatures
from crossan.zoo.training.trainer import TrainConfig, Trainer

pytestmark = pytest.mark.skipif(
    not triton_available() or (os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available()),
    reason="needs triton with TRITON_INTERPRET=1 or a CUDA device",
)

# Float32 throughout: the loss and every gradient agree to these tolerances (the kernel sums
# the K inputs and the GEMM in a different order than the reference).
LOSS_TOLERANCE = dict(atol=1e-5, rtol=1e-5)
GRAD_TOLERANCE = dict(atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("preset", ["crossan-tiva", "iisan-ti"])
def test_training_step_matches_reference(preset: str, seed: int, toy_root: Path) -> None:
    dataset = read_microlens(toy_root, name="toy")
    modalities = crossan.preset_config(preset).modalities
    generator = torch.Generator().manual_seed(seed)
    states = {m: torch.randn(dataset.num_items, 3, 24, generator=generator) for m in modalities}
    features = ItemFeatures(dataset.num_items, states)
    losses, grads = {}, {}
    for backend in ("torch", "triton"):
        torch.manual_seed(0)
        model = crossan.create_model(
            preset,
            backbone_widths=(24,) * len(modalities),
            num_states=3,
            adapter_dim=40,
            dropout=0.0,
            attention_dropout=0.0,
            mixer_backend=backend,
        )
        gates = torch.Generator().manual_seed(seed)
        with torch.no_grad():  # non-trivial but unsaturated gates, so every mixing weight matters
            for name, parameter in model.named_parameters():
                if name.endswith("logits"):
                    parameter.normal_(std=0.5, generator=gates)
                elif name.endswith("theta"):  # IISAN divides theta by 0.1
                    parameter.normal_(std=0.05, generator=gates)
        trainer = Trainer(model, dataset, features, TrainConfig(batch_size=16), console=Console(quiet=True))
        loss = trainer.loss(trainer.windows[:16])
        loss.backward()
        losses[backend] = loss.detach()
        grads[backend] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    torch.testing.assert_close(losses["triton"], losses["torch"], **LOSS_TOLERANCE)
    assert grads["triton"].keys() == grads["torch"].keys()
    gate_grads = [n for n in grads["torch"] if n.endswith(("logits", "theta")) and "fusion" not in n]
    assert gate_grads and all(grads["torch"][n].abs().sum() > 0 for n in gate_grads)
    for name, reference in grads["torch"].items():
        torch.testing.assert_close(
            grads["triton"][name], reference, **GRAD_TOLERANCE, msg=lambda m, name=name: f"{name}: {m}"
        )
