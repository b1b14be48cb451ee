"""Recommenders over cached backbone states through a side network: towers, heads, fusion and
the frozen-similarity prior."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from crossan.zoo.core.errors import ConfigError
from crossan.zoo.layers.fusion import make_fusion
from crossan.zoo.layers.head import TowerHead
from crossan.zoo.layers.mixer import GatedCrossModalMixer
from crossan.zoo.layers.side_network import SideGates, SideNetwork
from crossan.zoo.layers.trained_items import ColdItemScale
from crossan.zoo.models.config import AUTO, SideNetworkConfig
from crossan.zoo.models.content import ContentRecommender

__all__ = ["SideNetworkRecommender"]

MixerT = TypeVar("MixerT", bound=GatedCrossModalMixer)


class SideNetworkRecommender(ContentRecommender):
    """Side towers over cached backbone states -> per-tower heads -> fusion -> item embedding.

    The side network is `crossan.zoo.layers.side_network.SideNetwork`; subclasses say how its gates are
    wired (`make_gates`) and write the same network out one tower at a time
    (`per_tower_outputs`, the slow reference the batched layer is tested against).
    """

    config: SideNetworkConfig
    projections: nn.ModuleList
    side: SideNetwork
    heads: nn.ModuleList

    def __init__(self, config: SideNetworkConfig) -> None:
        super().__init__(config)
        width = config.resolved_side_width
        self.side_width = width
        # Backbones narrower or wider than the side width get a learned projection.
        self.projections = nn.ModuleList(
            nn.Identity() if w == width else nn.Linear(w, width) for w in config.backbone_widths
        )
        self.side = SideNetwork(
            self.make_gates(config), width, config.adapter_dim, config.adapter_activation, config.mixer_backend
        )
        self.heads = nn.ModuleList(TowerHead(width, config.embedding_dim) for _ in range(config.num_towers))
        self.fusion = make_fusion(config.fusion, config.num_towers, config.embedding_dim, config.top_k)
        self.cold_items: ColdItemScale | None = None
        if config.backbone_prior_cold_scale is not None:
            if config.num_items < 1:
                raise ConfigError(
                    "backbone_prior_cold_scale needs num_items (the catalogue size, set from the data set)"
                )
            self.cold_items = ColdItemScale(config.num_items)

    @staticmethod
    def make_gates(config: SideNetworkConfig) -> SideGates:
        """The gates of every side layer: which sources feed which tower, through which mixer."""
        raise NotImplementedError

    @property
    def head_dtype(self) -> torch.dtype:
        """The dtype of the tower heads' weights: the model's compute dtype, which backbone states
        are cast to."""
        return next(self.heads.parameters()).dtype

    def gate_mixer(self, name: str, kind: type[MixerT]) -> MixerT:
        """The mixer of gate group `name` (`SideGates.mixers`), checked to be a `kind`."""
        mixer = self.side.gates.mixers[name]
        if not isinstance(mixer, kind):
            raise TypeError(f"gate group {name!r} holds a {type(mixer).__name__}, not a {kind.__name__}")
        return mixer

    @property
    def content_input_names(self) -> tuple[str, ...]:
        return tuple(f"states_{m}" for m in self.config.modalities)

    def random_content_inputs(
        self, num_items: int, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, ...]:
        return tuple(
            torch.randn(num_items, self.config.num_states, width, generator=generator)
            for width in self.config.backbone_widths
        )

    def side_states(self, item_inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """Layer-major states `[L, M, N, W]` at the side width from per-modality inputs `[N, L, W_m]`:
        one copy of the batch, after which every side layer reads its states in place."""
        if len(item_inputs) != len(self.config.modalities):
            raise ValueError(
                f"expected {len(self.config.modalities)} state tensors "
                f"({', '.join(self.content_input_names)}), got {len(item_inputs)}"
            )
        dtype = self.head_dtype
        projected = []
        for modality, states, projection, width in zip(
            self.config.modalities, item_inputs, self.projections, self.config.backbone_widths, strict=True
        ):
            if states.dim() != 3 or states.shape[1] != self.config.num_states or states.shape[2] != width:
                raise ValueError(
                    f"states_{modality} must be [N, {self.config.num_states}, {width}], got {list(states.shape)}"
                )
            projected.append(projection(states.to(dtype)).transpose(0, 1))
        return torch.stack(projected, dim=1)

    def adapter_parameters(self) -> list[nn.Parameter]:
        """The side network's adapters (`SideNetwork.adapter_parameters`)."""
        return self.side.adapter_parameters()

    def tower_outputs(self, states: torch.Tensor) -> torch.Tensor:
        """Last-layer side outputs `[T, N, W]` of every tower from layer-major states `[L, M, N, W]`."""
        return self.side(states)

    def per_tower_outputs(self, states: torch.Tensor) -> torch.Tensor:
        """The same as `tower_outputs`, one tower at a time with stacked inputs and the standalone
        mixer and adapter modules, on this model's parameters. Slow: for tests and benchmarks."""
        raise NotImplementedError

    def tower_embeddings(self, *item_inputs: torch.Tensor) -> torch.Tensor:
        """Per-tower item embeddings `[N, T, D]` (before fusion)."""
        return self.head_embeddings(self.tower_outputs(self.side_states(item_inputs)))

    def head_embeddings(self, outputs: torch.Tensor) -> torch.Tensor:
        """Per-tower item embeddings `[N, T, D]` from the towers' last side outputs `[T, N, W]`."""
        return torch.stack([head(z) for head, z in zip(self.heads, outputs, strict=True)], dim=1)

    def encode_content(self, *content_inputs: torch.Tensor) -> torch.Tensor:
        return self.fusion(self.tower_embeddings(*content_inputs))

    @property
    def prior_training_weight(self) -> float:
        return self.config.backbone_prior_weight

    @property
    def prior_inference_weight(self) -> float:
        """The inference weight; until `auto` is chosen, the training weight."""
        weight = self.config.backbone_prior_inference_weight
        if weight is None or isinstance(weight, str):  # the only string the config admits is AUTO
            return self.config.backbone_prior_weight
        return weight

    @property
    def prior_cold_scale(self) -> float:
        """The multiple of the inference weight on cold items; until `auto` is chosen, 1."""
        scale = self.config.backbone_prior_cold_scale
        return 1.0 if scale is None or isinstance(scale, str) else scale

    def validation_choices(self) -> dict[str, tuple[Any, ...]]:
        choices: dict[str, tuple[Any, ...]] = {}
        if self.config.backbone_prior_inference_weight == AUTO:
            choices["backbone_prior_inference_weight"] = self.config.backbone_prior_inference_grid
        if self.config.backbone_prior_cold_scale == AUTO:
            choices["backbone_prior_cold_scale"] = self.config.backbone_prior_cold_grid
        return choices

    def mark_trained_items(self, seen: torch.Tensor) -> None:
        super().mark_trained_items(seen)
        if self.cold_items is not None:
            self.cold_items.mark_seen(seen.to(self.cold_items.seen.device))

    @property
    def prior_decay(self) -> float:
        return self.config.backbone_prior_decay

    @property
    def prior_width(self) -> int:
        return sum(self.config.backbone_widths)

    def prior_embeddings(self, *item_inputs: torch.Tensor) -> torch.Tensor:
        """Each backbone's last kept state (its own pooled output: the sentence embedding of a
        sentence model), unit length, concatenated and scaled by `1 / sqrt(M)` so that the
        prior's score is the mean of the modalities' cosines. Outside training, with a cold
        scale, items that never occur in training are multiplied by it."""
        dtype = self.head_dtype
        content = self.content_inputs(item_inputs)
        frozen = (
            torch.cat([F.normalize(states[:, -1].to(dtype), dim=-1) for states in content], dim=-1)
            / len(content) ** 0.5
        )
        if self.cold_items is None or self.training:
            return frozen
        return frozen * self.cold_items(item_inputs[-1], self.prior_cold_scale).to(dtype)

    @torch.no_grad()
    def tower_representations(
        self, gather: Callable[[torch.Tensor], tuple[torch.Tensor, ...]], num_items: int, batch_size: int = 2048
    ) -> dict[str, torch.Tensor]:
        """Every tower's last side-layer output `[num_items, W]` (float32), by tower name."""
        chunks = [
            self.tower_outputs(
                self.side_states(self.content_inputs(gather(torch.arange(start, min(start + batch_size, num_items)))))
            ).float()
            for start in range(0, num_items, batch_size)
        ]
        outputs = torch.cat(chunks, dim=1)
        return dict(zip(self.side.gates.tower_names, outputs, strict=True))

    def gate_table(self) -> tuple[torch.Tensor, tuple[str, ...], tuple[str, ...]]:
        """Gate values for analyses: mixing matrices `[L, T, M + T]` (float32, detached), tower
        names and source names (`state:<modality>`, then `output:<tower>`)."""
        gates = self.side.gates
        return gates.mixing().detach(), gates.tower_names, gates.source_names()
