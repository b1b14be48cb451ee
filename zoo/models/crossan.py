"""CROSSAN (cross-modal side adapter network) and INDSAN (independent side adapters)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch.func import functional_call

from crossan.zoo.layers.adapter import HoulsbyAdapter
from crossan.zoo.layers.mixer import GatedCrossModalMixer
from crossan.zoo.layers.side_layer import GatedAdapterLayer
from crossan.zoo.layers.side_network import GateGroup, SideGates
from crossan.zoo.models.config import MODALITIES, SideNetworkConfig
from crossan.zoo.models.registry import register_model
from crossan.zoo.models.side_network import SideNetworkRecommender

__all__ = ["ALL_FOUR_MODALITIES", "Crossan", "CrossanConfig"]


@dataclass(frozen=True)
class CrossanConfig(SideNetworkConfig):
    """CROSSAN (`cross_modal=True`) or INDSAN (independent towers, `cross_modal=False`)."""

    architecture: ClassVar[str] = "crossan"
    cross_modal: bool = field(
        default=True,
        metadata={"help": "mix every modality's previous adapter output (CROSSAN) or only the tower's own (INDSAN)"},
    )


ALL_FOUR_MODALITIES = MODALITIES
"""Text, image, video and audio: the towers of the `-tiva` presets."""


@register_model(
    CrossanConfig,
    presets={
        "crossan-tiva": {"modalities": ALL_FOUR_MODALITIES, "top_k": 2},
        "crossan-tiva-concat": {"modalities": ALL_FOUR_MODALITIES, "fusion": "concat"},
        "crossan-tiva-sgated": {"modalities": ALL_FOUR_MODALITIES, "fusion": "static-gated"},
        "crossan-tiva-dgated": {"modalities": ALL_FOUR_MODALITIES, "fusion": "dynamic-gated"},
        "crossan-tia": {"modalities": ("text", "image", "audio"), "top_k": 2},
        "crossan-tiv": {"modalities": ("text", "image", "video"), "top_k": 2},
        "crossan-ti": {"modalities": ("text", "image"), "top_k": 2},
        "crossan-t": {"modalities": ("text",), "top_k": 1},
        "indsan-tiva": {"modalities": ALL_FOUR_MODALITIES, "cross_modal": False, "top_k": 2},
        "indsan-ti": {"modalities": ("text", "image"), "cross_modal": False, "top_k": 2},
    },
)
class Crossan(SideNetworkRecommender):
    """One adapter tower per modality, one adapter per kept backbone state.

    At side layer l, tower m's adapter input is a softmax-gated sum (CROSSAN eq. 5) of its
    own backbone state `S^m_l` and the previous outputs `Z^k_{l-1}` of every tower k
    (`cross_modal=True`), or of its own previous output only (INDSAN). `Z_{-1} = 0`.
    """

    config: CrossanConfig

    @staticmethod
    def make_gates(config: SideNetworkConfig) -> SideGates:
        """One softmax per tower and layer over `[S^m, Z^1..Z^M]` (CROSSAN) or `[S^m, Z^m]` (INDSAN)
        (`config` is a `CrossanConfig`)."""
        if not isinstance(config, CrossanConfig):
            raise TypeError(f"Crossan is built from a CrossanConfig, got a {type(config).__name__}")
        towers = range(config.num_towers)
        num_modalities = len(config.modalities)
        if config.cross_modal:
            columns = tuple((m, *(num_modalities + k for k in towers)) for m in towers)
        else:
            columns = tuple((m, num_modalities + m) for m in towers)
        mixer = GatedCrossModalMixer(len(columns[0]), gate_shape=(config.num_states, config.num_towers))
        return SideGates(
            config.modalities,
            config.modalities,
            config.num_states,
            [GateGroup("cross_modal", mixer, tuple(towers), columns)],
        )

    def per_tower_outputs(self, states: torch.Tensor) -> torch.Tensor:
        logits = self.gate_mixer("cross_modal", GatedCrossModalMixer).logits
        with torch.device("meta"):  # parameterless templates: functional_call supplies the weights
            layer = GatedAdapterLayer(
                GatedCrossModalMixer(logits.shape[-1]),
                HoulsbyAdapter(self.side_width, self.config.adapter_dim, self.config.adapter_activation),
            )
        previous = [torch.zeros_like(states[0, 0]) for _ in self.config.modalities]
        for index, adapters in enumerate(self.side.layers):
            current = []
            for m in range(len(previous)):
                mixed_from = previous if self.config.cross_modal else [previous[m]]
                weights = {"mixer.logits": logits[index, m], **adapters.tower_parameters(m, prefix="adapter.")}
                current.append(functional_call(layer, weights, (torch.stack([states[index, m], *mixed_from]),)))
            previous = current
        return torch.stack(previous)
