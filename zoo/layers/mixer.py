"""Gated cross-modal mixer (CROSSAN eq. 5) and its sigmoid-gated IISAN variant."""
from __future__ import annotations

import torch
from torch import nn

from kernels import BACKENDS, gated_mix_down
from zoo.layers.adapter import HoulsbyAdapter

__all__ = ["GatedCrossModalMixer", "SigmoidGatedMixer", "BACKENDS"]


class GatedCrossModalMixer(nn.Module):
    """Softmax-gated sum of K inputs: `x = sum_k softmax(theta)_k inputs_k`.

    In CROSSAN the inputs of modality m at side layer l are its own backbone state
    `S^m_l` followed by every modality's previous adapter output `Z^k_{l-1}`; the K
    learnable logits start at zero (uniform weights).

    `mix_down` runs the mix and the next adapter's down-projection together through
    `kernels.gated_mix_down` (one fused Triton kernel on CUDA, the PyTorch reference on
    CPU). The backend is fixed at construction so tracing and export see one branch.
    """

    def __init__(self, num_inputs: int, backend: str = "auto") -> None:
        super().__init__()
        if num_inputs < 1:
            raise ValueError(f"a mixer needs at least one input, got {num_inputs}")
        if backend not in BACKENDS:
            raise ValueError(f"unknown mixer backend {backend!r}; choose one of {BACKENDS}")
        self.num_inputs = num_inputs
        self.backend = backend
        self.logits = nn.Parameter(torch.zeros(num_inputs))

    def gate_logits(self) -> torch.Tensor:
        """The K logits whose softmax weights the inputs, `[K]`."""
        return self.logits

    def gate_weights(self) -> torch.Tensor:
        """Mixing weights `[K]` (non-negative, summing to one), computed in float32."""
        return torch.softmax(self.gate_logits().float(), dim=0)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """`inputs [K, ..., W] -> [..., W]`."""
        self._check(inputs)
        weights = self.gate_weights().to(inputs.dtype)
        return torch.tensordot(weights, inputs, dims=1)

    def mix_down(self, inputs: torch.Tensor, adapter: HoulsbyAdapter) -> tuple[torch.Tensor, torch.Tensor]:
        """Mixed input `x [N, W]` and the adapter's activated bottleneck `h [N, r]`."""
        self._check(inputs)
        return gated_mix_down(
            inputs,
            self.gate_logits(),
            adapter.down.weight.t(),
            adapter.down.bias,
            activation=adapter.activation,
            backend=self.backend,
        )

    def _check(self, inputs: torch.Tensor) -> None:
        if inputs.shape[0] != self.num_inputs:
            raise ValueError(f"mixer expects {self.num_inputs} stacked inputs, got {inputs.shape[0]}")


class SigmoidGatedMixer(GatedCrossModalMixer):
    """IISAN's two-input gate `g a + (1 - g) b`, `g = sigmoid(theta / temperature)`.

    Written as a softmax over the logits `[theta / temperature, 0]`, which equals the
    sigmoid form exactly, so it shares the fused kernel. One learnable scalar, init 0.
    """

    def __init__(self, temperature: float = 0.1, backend: str = "auto") -> None:
        super().__init__(num_inputs=2, backend=backend)
        if temperature <= 0:
            raise ValueError(f"gate temperature must be positive, got {temperature}")
        self.temperature = temperature
        del self.logits
        self.theta = nn.Parameter(torch.zeros(()))

    def gate_logits(self) -> torch.Tensor:
        return torch.stack([self.theta / self.temperature, torch.zeros_like(self.theta)])
