"""Gated cross-modal mixer (CROSSAN eq. 5) and its sigmoid-gated IISAN variant.

A mixer holds gate logits and turns them into mixing weights over K inputs. `gate_shape`
gives it leading axes, so that one module holds the gates of every tower and side layer
(`gate_shape=(L, T)` -> logits `[L, T, K]`, weights from one softmax); the batched side
network reads its mixing matrices from such mixers, and the per-tower reference calls a
single mixer (`gate_shape=()`) on stacked inputs. Both go through `gate_weights`.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["GatedCrossModalMixer", "SigmoidGatedMixer"]


class GatedCrossModalMixer(nn.Module):
    """Softmax-gated sum of K inputs: `x = sum_k softmax(theta)_k inputs_k`.

    In CROSSAN the inputs of modality m at side layer l are its own backbone state `S^m_l`
    followed by every modality's previous adapter output `Z^k_{l-1}`; the learnable logits
    start at zero (uniform weights).
    """

    def __init__(self, num_inputs: int, gate_shape: tuple[int, ...] = ()) -> None:
        super().__init__()
        if num_inputs < 1:
            raise ValueError(f"a mixer needs at least one input, got {num_inputs}")
        if any(size < 1 for size in gate_shape):
            raise ValueError(f"gate_shape sizes must be positive, got {gate_shape}")
        self.num_inputs = num_inputs
        self.gate_shape = tuple(gate_shape)
        self.logits = nn.Parameter(torch.zeros(*gate_shape, num_inputs))

    def gate_logits(self) -> torch.Tensor:
        """The logits whose softmax over the last axis weights the inputs, `[*gate_shape, K]`."""
        return self.logits

    def gate_weights(self) -> torch.Tensor:
        """Mixing weights `[*gate_shape, K]` (non-negative, summing to one over K), in float32."""
        return torch.softmax(self.gate_logits().float(), dim=-1)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """`inputs [K, ..., W] -> [..., W]` (a mixer with `gate_shape=()`)."""
        # str.format, not f-strings: TorchScript compiles these error paths too.
        if len(self.gate_shape) > 0:
            raise ValueError(f"this mixer holds gates of shape {self.gate_shape}; call gate_weights() instead")
        if inputs.shape[0] != self.num_inputs:
            raise ValueError(f"mixer expects {self.num_inputs} stacked inputs, got {inputs.shape[0]}")
        weights = self.gate_weights().to(inputs.dtype)
        return torch.tensordot(weights, inputs, dims=1)


class SigmoidGatedMixer(GatedCrossModalMixer):
    """IISAN's two-input gate `g a + (1 - g) b`, `g = sigmoid(theta / temperature)`.

    Written as a softmax over the logits `[theta / temperature, 0]`, which equals the sigmoid
    form exactly. One learnable scalar per gate (`theta [*gate_shape]`), init 0.
    """

    def __init__(self, temperature: float = 0.1, gate_shape: tuple[int, ...] = ()) -> None:
        super().__init__(num_inputs=2, gate_shape=gate_shape)
        if temperature <= 0:
            raise ValueError(f"gate temperature must be positive, got {temperature}")
        self.temperature = temperature
        del self.logits
        self.theta = nn.Parameter(torch.zeros(gate_shape))

    def gate_logits(self) -> torch.Tensor:
        scaled = self.theta / self.temperature
        return torch.stack([scaled, torch.zeros_like(scaled)], dim=-1)
