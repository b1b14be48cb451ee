"""Reusable building blocks: adapters, the cross-modal mixer, fusions, SASRec."""
from zoo.layers.activations import ACTIVATIONS, make_activation
from zoo.layers.adapter import HoulsbyAdapter
from zoo.layers.fusion import (
    FUSIONS,
    ConcatFusion,
    DynamicGatedFusion,
    MOMEFRouter,
    StaticGatedFusion,
    make_fusion,
)
from zoo.layers.mixer import BACKENDS, GatedCrossModalMixer, SigmoidGatedMixer
from zoo.layers.sasrec import SASRec

__all__ = [
    "ACTIVATIONS",
    "BACKENDS",
    "FUSIONS",
    "ConcatFusion",
    "DynamicGatedFusion",
    "GatedCrossModalMixer",
    "HoulsbyAdapter",
    "MOMEFRouter",
    "SASRec",
    "SigmoidGatedMixer",
    "StaticGatedFusion",
    "make_activation",
    "make_fusion",
]
