"""CROSSAN (cross-modal side adapter network) and INDSAN (independent side adapters)."""
from __future__ import annotations

import torch
from torch import nn

from zoo.layers.adapter import HoulsbyAdapter
from zoo.layers.mixer import GatedCrossModalMixer
from zoo.layers.side_layer import GatedAdapterLayer
from zoo.models.base import SideNetworkRecommender
from zoo.models.config import CrossanConfig

__all__ = ["Crossan"]


class Crossan(SideNetworkRecommender):
    """One adapter tower per modality, one adapter per kept backbone state.

    At side layer l, tower m's adapter input is a softmax-gated sum (CROSSAN eq. 5) of its
    own backbone state `S^m_l` and the previous outputs `Z^k_{l-1}` of every tower k
    (`cross_modal=True`), or of its own previous output only (INDSAN). `Z_{-1} = 0`.
    """

    config: CrossanConfig

    def __init__(self, config: CrossanConfig) -> None:
        super().__init__(config)
        num_inputs = 1 + (config.num_towers if config.cross_modal else 1)
        self.towers = nn.ModuleList(
            nn.ModuleList(
                GatedAdapterLayer(GatedCrossModalMixer(num_inputs, backend=config.mixer_backend),
                                  HoulsbyAdapter(self.side_width, config.adapter_dim, config.adapter_activation))
                for _ in range(config.num_states))
            for _ in config.modalities)

    def tower_outputs(self, states: list[torch.Tensor]) -> list[torch.Tensor]:
        previous = [torch.zeros_like(s[0]) for s in states]
        for layer in range(self.config.num_states):
            current = []
            for m, tower in enumerate(self.towers):
                mixed_from = previous if self.config.cross_modal else [previous[m]]
                current.append(tower[layer](torch.stack([states[m][layer], *mixed_from])))
            previous = current
        return previous
