"""Frozen foundation models and the extraction of their per-layer states."""

from crossan.zoo.backbones.extractor import TEXT_MAX_TOKENS, StateExtractor, kept_state_indices
from crossan.zoo.backbones.loading import PAPER_BACKBONES, POOLINGS, SOURCES, Backbone, BackboneSpec, load_backbone
from crossan.zoo.backbones.minilm import minilm_dir

__all__ = [
    "PAPER_BACKBONES",
    "POOLINGS",
    "SOURCES",
    "Backbone",
    "BackboneSpec",
    "StateExtractor",
    "TEXT_MAX_TOKENS",
    "kept_state_indices",
    "load_backbone",
    "minilm_dir",
]
