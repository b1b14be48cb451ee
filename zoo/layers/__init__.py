"""Reusable building blocks: adapters, the cross-modal mixer, the batched side network, fusions, SASRec."""
from kernels import BACKENDS
from zoo.layers.activations import ACTIVATIONS, activation_function, make_activation
from zoo.layers.adapter import HoulsbyAdapter, TowerAdapters
from zoo.layers.fusion import (
    FUSIONS,
    ConcatFusion,
    DynamicGatedFusion,
    MOMEFRouter,
    StaticGatedFusion,
    make_fusion,
)
from zoo.layers.head import TowerHead
from zoo.layers.mixer import GatedCrossModalMixer, SigmoidGatedMixer
from zoo.layers.sasrec import SASRec
from zoo.layers.side_layer import GatedAdapterLayer
from zoo.layers.side_network import GateGroup, SideGates, SideNetwork

__all__ = [
    "ACTIVATIONS",
    "BACKENDS",
    "FUSIONS",
    "ConcatFusion",
    "DynamicGatedFusion",
    "GateGroup",
    "GatedAdapterLayer",
    "GatedCrossModalMixer",
    "HoulsbyAdapter",
    "MOMEFRouter",
    "SASRec",
    "SideGates",
    "SideNetwork",
    "SigmoidGatedMixer",
    "StaticGatedFusion",
    "TowerAdapters",
    "TowerHead",
    "activation_function",
    "make_activation",
    "make_fusion",
]
