"""Fusion of per-tower item embeddings into one item embedding.

All fusions map `tower_embeddings [N, M, D] -> [N, D]`. MOMEF is the paper's method; the
other three are the ablations of its Table 5.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = [
    "MOMEFRouter",
    "ConcatFusion",
    "StaticGatedFusion",
    "DynamicGatedFusion",
    "FUSIONS",
    "make_fusion",
]


class MOMEFRouter(nn.Module):
    """Mixture of modality experts with top-k routing (CROSSAN eq. 6).

    Expert `f_m = Linear(D, D)(e_m)`; gate scores `Linear(M D, M)` over the concatenated
    tower embeddings; the k highest scores per item are softmax-normalised (the kept
    weights sum to one) and the others get weight zero. Dispatch is dense (a scatter of
    the kept weights into an `[N, M]` gate, then a weighted sum over all experts), so a
    fixed integer k survives ONNX export.
    """

    def __init__(self, num_modalities: int, dim: int, top_k: int) -> None:
        super().__init__()
        if not 1 <= top_k <= num_modalities:
            raise ValueError(f"top_k must lie in 1..{num_modalities} (the number of towers), got {top_k}")
        self.num_modalities = num_modalities
        self.top_k = top_k
        self.experts = nn.ModuleList(nn.Linear(dim, dim) for _ in range(num_modalities))
        self.gate = nn.Linear(dim * num_modalities, num_modalities)

    def routing_weights(self, tower_embeddings: torch.Tensor) -> torch.Tensor:
        """Per-item expert weights `[N, M]`: k non-zero entries summing to one."""
        scores = self.gate(tower_embeddings.flatten(1))
        kept_scores, kept_index = torch.topk(scores, self.top_k, dim=-1)
        kept_weights = torch.softmax(kept_scores, dim=-1)
        return torch.zeros_like(scores).scatter(-1, kept_index, kept_weights)

    def forward(self, tower_embeddings: torch.Tensor) -> torch.Tensor:
        weights = self.routing_weights(tower_embeddings)
        expert_out = torch.stack([expert(tower_embeddings[:, m]) for m, expert in enumerate(self.experts)], dim=1)
        return (weights.unsqueeze(-1) * expert_out).sum(dim=1)


class ConcatFusion(nn.Module):
    """`Linear(M D, D)` over the concatenated tower embeddings."""

    def __init__(self, num_modalities: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim * num_modalities, dim)

    def forward(self, tower_embeddings: torch.Tensor) -> torch.Tensor:
        return self.proj(tower_embeddings.flatten(1))


class StaticGatedFusion(nn.Module):
    """One learnable softmax weight per modality, the same for every item."""

    def __init__(self, num_modalities: int, dim: int) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(num_modalities))

    def forward(self, tower_embeddings: torch.Tensor) -> torch.Tensor:
        weights = torch.softmax(self.logits, dim=0)
        return torch.einsum("m,nmd->nd", weights, tower_embeddings)


class DynamicGatedFusion(nn.Module):
    """Per-item softmax weights from `Linear(M D, M)`; every modality is kept."""

    def __init__(self, num_modalities: int, dim: int) -> None:
        super().__init__()
        self.gate = nn.Linear(dim * num_modalities, num_modalities)

    def forward(self, tower_embeddings: torch.Tensor) -> torch.Tensor:
        weights = torch.softmax(self.gate(tower_embeddings.flatten(1)), dim=-1)
        return (weights.unsqueeze(-1) * tower_embeddings).sum(dim=1)


FUSIONS = ("momef", "concat", "static-gated", "dynamic-gated")


def make_fusion(name: str, num_modalities: int, dim: int, top_k: int) -> nn.Module:
    """Build the fusion called `name`; `top_k` is used by MOMEF only."""
    if name == "momef":
        return MOMEFRouter(num_modalities, dim, top_k)
    builders = {"concat": ConcatFusion, "static-gated": StaticGatedFusion, "dynamic-gated": DynamicGatedFusion}
    if name not in builders:
        raise ValueError(f"unknown fusion {name!r}; choose one of {FUSIONS}")
    return builders[name](num_modalities, dim)
