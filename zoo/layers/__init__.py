"""Reusable building blocks: adapters, the cross-modal mixer, the batched side network, fusions, SASRec,
the item ID term. Each works on its own (eager, TorchScript trace and script, ONNX)."""

from crossan.kernels.backends import BACKENDS
from crossan.zoo.layers.activations import ACTIVATIONS, activate, check_activation
from crossan.zoo.layers.adapter import HoulsbyAdapter, TowerAdapters
from crossan.zoo.layers.fusion import (
    FUSIONS,
    ConcatFusion,
    DynamicGatedFusion,
    MOMEFRouter,
    StaticGatedFusion,
    make_fusion,
)
from crossan.zoo.layers.head import TowerHead
from crossan.zoo.layers.item_ids import ItemIdEmbedding
from crossan.zoo.layers.mixer import GatedCrossModalMixer, SigmoidGatedMixer
from crossan.zoo.layers.sasrec import SASRec
from crossan.zoo.layers.side_layer import GatedAdapterLayer
from crossan.zoo.layers.side_network import GateGroup, SideGates, SideNetwork

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
    "ItemIdEmbedding",
    "MOMEFRouter",
    "SASRec",
    "SideGates",
    "SideNetwork",
    "SigmoidGatedMixer",
    "StaticGatedFusion",
    "TowerAdapters",
    "TowerHead",
    "activate",
    "check_activation",
    "make_fusion",
]
