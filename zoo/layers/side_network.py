"""The batched side network: every tower of a side layer in one operation.

With M modalities, T towers and L side layers, layer l's sources are the M backbone states
`S_l [M, N, W]` and the towers' previous outputs `Z_{l-1} [T, N, W]` (`Z_{-1} = 0`). Each
tower's adapter input is a gated sum of sources, so one mixing matrix `G_l [T, M + T]` holds
the whole layer's gates:

    x = G_l[:, :M] S_l + G_l[:, M:] Z_{l-1}          [T, N, W]
    Z_l = x + W_up act(W_down x + b_down) + b_up       (T adapters with stacked weights)

`crossan.kernels.gated_mix_down` computes x and the adapters' bottleneck for all towers at once (one
Triton launch per layer on CUDA; two matrix products over the flattened sources and one
batched matrix product on CPU), reading each source where it lives.

Which architecture this is depends only on the gates: `SideGates` assembles the mixing
matrices from mixers (`GatedCrossModalMixer`, `SigmoidGatedMixer`) holding the gates of every
layer, each mixer feeding some towers from some sources. CROSSAN, INDSAN, IISAN and IISAN-E
each describe their wiring in their model file.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import torch
from torch import nn

from crossan.kernels.backends import BACKENDS
from crossan.kernels.reference import mix_down_reference
from crossan.zoo.layers.adapter import TowerAdapters
from crossan.zoo.layers.mixer import GatedCrossModalMixer

__all__ = ["GateGroup", "SideGates", "SideNetwork"]


class MixerDict(nn.ModuleDict):
    """Gate mixers by group name: an `nn.ModuleDict` whose items the type checker knows as mixers."""

    def items(self) -> list[tuple[str, GatedCrossModalMixer]]:  # type: ignore[override]  # narrower values
        return [(name, cast(GatedCrossModalMixer, mixer)) for name, mixer in super().items()]


class AdapterLayers(nn.ModuleList):
    """The side layers' adapters: an `nn.ModuleList` whose items the type checker knows as `TowerAdapters`
    (TorchScript iterates it as a plain module list)."""

    def __iter__(self) -> Iterator[TowerAdapters]:
        return (cast(TowerAdapters, layer) for layer in super().__iter__())


@dataclass(frozen=True)
class GateGroup:
    """Towers fed by one mixer: tower `towers[i]` gets `sum_k w[l, i, k] source[columns[i][k]]`,
    where `w = mixer.gate_weights()` is `[L, len(towers), K]` and sources are numbered
    `0..M-1` (backbone states) then `M..M+T-1` (previous tower outputs)."""

    name: str
    mixer: GatedCrossModalMixer
    towers: tuple[int, ...]
    columns: tuple[tuple[int, ...], ...]


class SideGates(nn.Module):
    """Mixing matrices `[L, T, M + T]` of every side layer, from gate groups plus fixed entries.

    `fixed` entries `(tower, source, value)` are constants (IISAN's inter tower adds its own
    previous output with weight one). `pattern [T, M + T]` marks the sources each tower reads;
    the fused kernel loads nothing else.
    """

    if TYPE_CHECKING:  # the buffers' types, for the type checker only: TorchScript cannot read them here
        pattern: torch.Tensor  # [T, M + T] bool
        fixed_weights: torch.Tensor  # [T, M + T]: the fixed entries' values, zero elsewhere

    def __init__(
        self,
        modalities: Sequence[str],
        tower_names: Sequence[str],
        num_layers: int,
        groups: Sequence[GateGroup],
        fixed: Sequence[tuple[int, int, float]] = (),
    ) -> None:
        super().__init__()
        self.modalities = tuple(modalities)
        self.tower_names = tuple(tower_names)
        self.num_layers = num_layers
        self.num_modalities = len(self.modalities)
        self.num_towers = num_towers = len(self.tower_names)
        num_sources = self.num_modalities + num_towers
        self.mixers = MixerDict({group.name: group.mixer for group in groups})
        self._wiring: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # group -> (towers, columns)
        pattern = torch.zeros(num_towers, num_sources, dtype=torch.bool)
        fixed_weights = torch.zeros(num_towers, num_sources)
        for group in groups:
            columns = torch.tensor(group.columns, dtype=torch.long)
            expected = (num_layers, len(group.towers), group.mixer.num_inputs)
            if columns.shape != expected[1:] or group.mixer.gate_shape != expected[:2]:
                raise ValueError(
                    f"gate group {group.name!r}: mixer gates {group.mixer.gate_shape} x "
                    f"{group.mixer.num_inputs} inputs do not match {len(group.towers)} towers with "
                    f"columns {tuple(columns.shape)} over {num_layers} layers"
                )
            if columns.min() < 0 or columns.max() >= num_sources:
                raise ValueError(f"gate group {group.name!r}: source columns must lie in 0..{num_sources - 1}")
            towers = torch.tensor(group.towers, dtype=torch.long)
            pattern[towers.unsqueeze(1), columns] = True
            self._wiring[group.name] = (towers, columns)
        for tower, source, value in fixed:
            pattern[tower, source] = True
            fixed_weights[tower, source] = value
        if not pattern.any(dim=1).all():
            raise ValueError("every tower needs at least one source")
        self.register_buffer("pattern", pattern, persistent=False)
        self.register_buffer("fixed_weights", fixed_weights, persistent=False)

    def source_names(self) -> tuple[str, ...]:
        """Column labels of the mixing matrices: `state:<modality>`, then `output:<tower>`."""
        return (*(f"state:{m}" for m in self.modalities), *(f"output:{t}" for t in self.tower_names))

    def mixing(self) -> torch.Tensor:
        """The mixing matrices `[L, T, M + T]` in float32 (differentiable in the gate parameters)."""
        num_sources = self.pattern.shape[1]
        mixing = self.fixed_weights.float().expand(self.num_layers, -1, -1)
        for name, mixer in self.mixers.items():
            towers, columns = self._wiring[name]
            weights = mixer.gate_weights()  # [L, R, K]
            block = weights.new_zeros(self.num_layers, towers.shape[0], num_sources)
            block = block.scatter(-1, columns.to(weights.device).expand(self.num_layers, -1, -1), weights)
            mixing = mixing.index_add(1, towers.to(weights.device), block)
        return mixing

    def forward(self) -> torch.Tensor:
        """The mixing matrices (`mixing()`), so the gates run as a module of their own."""
        return self.mixing()


class SideNetwork(nn.Module):
    """L side layers over T towers; `forward(states [L, M, N, W]) -> Z_{L-1} [T, N, W]`."""

    def __init__(
        self, gates: SideGates, width: int, adapter_dim: int, activation: str = "relu", backend: str = "auto"
    ) -> None:
        super().__init__()
        if backend not in BACKENDS:
            raise ValueError(f"unknown mixer backend {backend!r}; choose one of {BACKENDS}")
        self.gates = gates
        self.backend = backend
        self.layers = AdapterLayers(
            TowerAdapters(gates.num_towers, width, adapter_dim, activation) for _ in range(gates.num_layers)
        )

    def adapter_parameters(self) -> list[nn.Parameter]:
        """Every side layer's adapter weights (not the gates'): what adapts the backbones' states."""
        return list(self.layers.parameters())

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        """Last side layer's outputs `[T, N, W]` from layer-major backbone states `[L, M, N, W]`."""
        num_layers, num_modalities = len(self.layers), self.gates.num_modalities
        if states.dim() != 4 or states.shape[0] != num_layers or states.shape[1] != num_modalities:
            raise ValueError(
                f"side network states must be [L, M, N, W] with L, M = {num_layers}, {num_modalities}, "
                f"got {list(states.shape)}"
            )
        mixing = self.gates.mixing()
        previous: torch.Tensor | None = None
        for layer, adapters in enumerate(self.layers):
            if torch.jit.is_scripting():  # TorchScript runs the reference; it cannot call Triton
                x, hidden = mix_down_reference(
                    states[layer],
                    previous,
                    mixing[layer],
                    adapters.down_weight,
                    adapters.down_bias,
                    adapters.activation,
                    self.gates.pattern,
                )
            else:
                x, hidden = self._mix_down(
                    states[layer],
                    previous,
                    mixing[layer],
                    adapters.down_weight,
                    adapters.down_bias,
                    adapters.activation,
                )
            previous = adapters.up_residual(x, hidden)
        assert previous is not None  # there is at least one layer
        return previous

    @torch.jit.unused
    def _mix_down(
        self,
        states: torch.Tensor,
        previous: torch.Tensor | None,
        mixing: torch.Tensor,
        down_weight: torch.Tensor,
        down_bias: torch.Tensor,
        activation: str,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One layer's mix and bottleneck through the dispatcher (Triton on CUDA, else the reference);
        the kernel module (and Triton with it) is imported on the first call, not with the layers."""
        from crossan.kernels.gated_mix_down import gated_mix_down

        return gated_mix_down(
            states, previous, mixing, down_weight, down_bias, activation, self.backend, self.gates.pattern
        )
