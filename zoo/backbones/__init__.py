"""Frozen foundation models and the extraction of their per-layer states."""
from zoo.backbones.extractor import StateExtractor, kept_state_indices
from zoo.backbones.loading import PAPER_BACKBONES, POOLINGS, SOURCES, Backbone, BackboneSpec, load_backbone, minilm_dir

__all__ = ["PAPER_BACKBONES", "POOLINGS", "SOURCES", "Backbone", "BackboneSpec", "StateExtractor",
           "kept_state_indices", "load_backbone", "minilm_dir"]
