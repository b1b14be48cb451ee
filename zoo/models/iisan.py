"""IISAN (two modalities) and IISAN-E (N modalities), the predecessor method."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch.func import functional_call

from crossan.zoo.core.errors import ConfigError
from crossan.zoo.layers.adapter import HoulsbyAdapter
from crossan.zoo.layers.mixer import GatedCrossModalMixer, SigmoidGatedMixer
from crossan.zoo.layers.side_layer import GatedAdapterLayer
from crossan.zoo.layers.side_network import GateGroup, SideGates
from crossan.zoo.models.config import MODALITIES, SideNetworkConfig
from crossan.zoo.models.registry import register_model
from crossan.zoo.models.side_network import SideNetworkRecommender

__all__ = ["IISAN", "IISANConfig"]


@dataclass(frozen=True)
class IISANConfig(SideNetworkConfig):
    """IISAN / IISAN-E: sigmoid-gated intra towers plus one inter tower over backbone states."""

    architecture: ClassVar[str] = "iisan"
    fusion: str = "concat"
    gate_temperature: float = field(default=0.1, metadata={"help": "g = sigmoid(theta / temperature)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.modalities) < 2:
            raise ConfigError("IISAN needs at least two modalities (its inter tower mixes them)")
        if self.gate_temperature <= 0:
            raise ConfigError(f"gate_temperature must be positive, got {self.gate_temperature}")

    @property
    def num_towers(self) -> int:
        return len(self.modalities) + 1


@register_model(
    IISANConfig,
    presets={
        "iisan-ti": {"modalities": ("text", "image")},
        "iisan-e-tiva": {"modalities": MODALITIES, "adapter_dim": 1024},
    },
)
class IISAN(SideNetworkRecommender):
    """Intra towers `Z^m_l = A(g S^m_l + (1 - g) Z^m_{l-1})`, `g = sigmoid(theta_l / 0.1)`,
    and one inter tower `Z^mm_l = A(Z^mm_{l-1} + mix_l(S^1_l, ..., S^M_l))` over backbone
    states, where `mix_l` is the same sigmoid gate for two modalities and a softmax gate
    with one logit per modality for more (IISAN-E). The inter tower is the last tower.
    """

    config: IISANConfig

    @staticmethod
    def make_gates(config: SideNetworkConfig) -> SideGates:
        """Intra gates over `[S^m, Z^m]`, the inter gate over every `S^m`, plus the inter tower's
        own previous output with weight one (`config` is an `IISANConfig`)."""
        if not isinstance(config, IISANConfig):
            raise TypeError(f"IISAN is built from an IISANConfig, got a {type(config).__name__}")
        num_modalities, layers = len(config.modalities), config.num_states
        inter_tower = num_modalities
        intra = GateGroup(
            "intra",
            SigmoidGatedMixer(config.gate_temperature, gate_shape=(layers, num_modalities)),
            tuple(range(num_modalities)),
            tuple((m, num_modalities + m) for m in range(num_modalities)),
        )
        inter_mixer = (
            SigmoidGatedMixer(config.gate_temperature, gate_shape=(layers, 1))
            if num_modalities == 2
            else GatedCrossModalMixer(num_modalities, gate_shape=(layers, 1))
        )
        inter = GateGroup("inter", inter_mixer, (inter_tower,), (tuple(range(num_modalities)),))
        return SideGates(
            config.modalities,
            (*config.modalities, "inter"),
            layers,
            [intra, inter],
            fixed=[(inter_tower, num_modalities + inter_tower, 1.0)],
        )

    def per_tower_outputs(self, states: torch.Tensor) -> torch.Tensor:
        intra_mixer = self.gate_mixer("intra", SigmoidGatedMixer)
        inter_gates = self.gate_mixer("inter", GatedCrossModalMixer)
        num_modalities = len(self.config.modalities)
        with torch.device("meta"):  # parameterless templates: functional_call supplies the weights

            def adapter() -> HoulsbyAdapter:
                return HoulsbyAdapter(self.side_width, self.config.adapter_dim, self.config.adapter_activation)

            intra_layer = GatedAdapterLayer(SigmoidGatedMixer(self.config.gate_temperature), adapter())
            inter_mixer = (
                SigmoidGatedMixer(self.config.gate_temperature)
                if num_modalities == 2
                else GatedCrossModalMixer(num_modalities)
            )
            inter_adapter = adapter()
        intra = [torch.zeros_like(states[0, 0]) for _ in range(num_modalities)]
        inter = torch.zeros_like(states[0, 0])
        for index, adapters in enumerate(self.side.layers):
            intra = [
                functional_call(
                    intra_layer,
                    {"mixer.theta": intra_mixer.theta[index, m], **adapters.tower_parameters(m, prefix="adapter.")},
                    (torch.stack([states[index, m], intra[m]]),),
                )
                for m in range(num_modalities)
            ]
            gate_name = "theta" if num_modalities == 2 else "logits"
            mixed_states = functional_call(
                inter_mixer, {gate_name: getattr(inter_gates, gate_name)[index, 0]}, (states[index],)
            )
            inter = functional_call(inter_adapter, adapters.tower_parameters(num_modalities), (inter + mixed_states,))
        return torch.stack([*intra, inter])
