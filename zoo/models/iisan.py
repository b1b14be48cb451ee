"""IISAN (two modalities) and IISAN-E (N modalities), the predecessor method."""
from __future__ import annotations

import torch
from torch import nn

from zoo.layers.adapter import HoulsbyAdapter
from zoo.layers.mixer import GatedCrossModalMixer, SigmoidGatedMixer
from zoo.layers.side_layer import GatedAdapterLayer
from zoo.models.base import SideNetworkRecommender
from zoo.models.config import IISANConfig

__all__ = ["IISAN"]


class IISAN(SideNetworkRecommender):
    """Intra towers `Z^m_l = A(g S^m_l + (1 - g) Z^m_{l-1})`, `g = sigmoid(theta_l / 0.1)`,
    and one inter tower `Z^mm_l = A(Z^mm_{l-1} + mix_l(S^1_l, ..., S^M_l))` over backbone
    states, where `mix_l` is the same sigmoid gate for two modalities and a softmax gate
    with one logit per modality for more (IISAN-E). The inter tower is the last tower.
    """

    config: IISANConfig

    def __init__(self, config: IISANConfig) -> None:
        super().__init__(config)

        def adapter() -> HoulsbyAdapter:
            return HoulsbyAdapter(self.side_width, config.adapter_dim, config.adapter_activation)

        def intra_mixer() -> SigmoidGatedMixer:
            return SigmoidGatedMixer(config.gate_temperature, backend=config.mixer_backend)

        self.intra_towers = nn.ModuleList(
            nn.ModuleList(GatedAdapterLayer(intra_mixer(), adapter()) for _ in range(config.num_states))
            for _ in config.modalities)
        two = len(config.modalities) == 2
        self.inter_mixers = nn.ModuleList(
            intra_mixer() if two else GatedCrossModalMixer(len(config.modalities), backend=config.mixer_backend)
            for _ in range(config.num_states))
        self.inter_adapters = nn.ModuleList(adapter() for _ in range(config.num_states))

    def tower_outputs(self, states: list[torch.Tensor]) -> list[torch.Tensor]:
        intra = [torch.zeros_like(s[0]) for s in states]
        inter = torch.zeros_like(states[0][0])
        for layer in range(self.config.num_states):
            intra = [tower[layer](torch.stack([states[m][layer], intra[m]]))
                     for m, tower in enumerate(self.intra_towers)]
            mixed_states = self.inter_mixers[layer](torch.stack([s[layer] for s in states]))
            inter = self.inter_adapters[layer](inter + mixed_states)
        return [*intra, inter]
