"""Frozen backbones by source: `pretrained` (hub ids or local dirs) or `tiny` (random, seeded)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from crossan.zoo.backbones.minilm import MINILM_ALIAS, minilm_dir
from crossan.zoo.core.errors import ConfigError, MissingFileError

if TYPE_CHECKING:  # transformers loads with the first backbone: importing the zoo stays quick
    from transformers import PreTrainedModel

__all__ = ["PAPER_BACKBONES", "POOLINGS", "SOURCES", "Backbone", "BackboneSpec", "load_backbone"]

SOURCES = ("tiny", "pretrained")
POOLINGS = ("cls", "mean")

PAPER_BACKBONES = {
    "text": "bert-base-uncased",
    "image": "google/vit-base-patch16-224",
    "video": "MCG-NJU/videomae-base",
    "audio": "MIT/ast-finetuned-audioset-10-10-0.4593",
}


@dataclass(frozen=True)
class BackboneSpec:
    """Which frozen model encodes one modality, and how its states are pooled."""

    modality: str
    source: str = "tiny"
    name_or_path: str = ""
    pooling: str = "cls"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ConfigError(f"backbone source must be one of {SOURCES}, got {self.source!r}")
        if self.pooling not in POOLINGS:
            raise ConfigError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.source == "pretrained" and not self.name_or_path:
            raise ConfigError(f"a pretrained {self.modality} backbone needs a hub id or a local directory")

    @classmethod
    def resolve(
        cls, modality: str, source: str, override: str | None = None, pooling: str | None = None, seed: int = 0
    ) -> BackboneSpec:
        """Spec for `modality`: an explicit `override` (id, dir or `minilm`) wins over the source default.

        `minilm` is a sentence-embedding model, so it defaults to masked mean pooling.
        """
        if override is not None:
            default_pooling = "mean" if override == MINILM_ALIAS else "cls"
            return cls(modality, "pretrained", override, pooling or default_pooling, seed)
        if source == "pretrained":
            return cls(modality, source, PAPER_BACKBONES[modality], pooling or "cls", seed)
        return cls(modality, source, "", pooling or "cls", seed)


@dataclass
class Backbone:
    """A loaded frozen backbone with its processor and an identity for cache keys."""

    spec: BackboneSpec
    model: PreTrainedModel
    processor: Any
    identity: dict[str, Any]

    @property
    def width(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def num_layers(self) -> int:
        return int(self.model.config.num_hidden_layers)


def _weights_hash(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def _load_pretrained(spec: BackboneSpec) -> tuple[PreTrainedModel, Any]:
    from transformers import (
        ASTFeatureExtractor,
        AutoImageProcessor,
        AutoModel,
        AutoTokenizer,
        VideoMAEImageProcessorPil,
    )

    location = str(minilm_dir()) if spec.name_or_path == MINILM_ALIAS else spec.name_or_path
    # Image processors on the PIL backend: the default one needs torchvision, which this project
    # does not install, and the serving side reproduces the PIL one without transformers.
    processor_loaders: dict[str, Callable[[str], Any]] = {
        "text": AutoTokenizer.from_pretrained,
        "image": lambda where: AutoImageProcessor.from_pretrained(where, backend="pil"),
        "video": VideoMAEImageProcessorPil.from_pretrained,
        "audio": ASTFeatureExtractor.from_pretrained,
    }
    try:
        model = AutoModel.from_pretrained(location)
        processor = processor_loaders[spec.modality](location)
    except OSError as error:
        # Hub errors run to several lines of advice; their first line names the problem.
        reason = str(error).partition("\n")[0]
        raise MissingFileError(f"cannot load the {spec.modality} backbone {spec.name_or_path!r}: {reason}") from error
    except ValueError as error:
        # transformers' answer to a folder whose config names no model type it knows.
        reason = str(error).partition("\n")[0]
        raise ConfigError(f"cannot load the {spec.modality} backbone {spec.name_or_path!r}: {reason}") from error
    return model, processor


def load_backbone(spec: BackboneSpec) -> Backbone:
    """Load `spec`'s model in eval mode with gradients off (it stays frozen)."""
    if spec.source == "tiny":
        from crossan.zoo.backbones.tiny import tiny_backbone

        model, processor = tiny_backbone(spec.modality, spec.seed)
    else:
        model, processor = _load_pretrained(spec)
    model.eval().requires_grad_(False)
    identity = {
        "modality": spec.modality,
        "source": spec.source,
        "name_or_path": spec.name_or_path,
        "pooling": spec.pooling,
        "architecture": type(model).__name__,
        "config_digest": config_digest(model.config.to_dict()),
        "weights_hash": _weights_hash(model),
    }
    return Backbone(spec, model, processor, identity)


def config_digest(config: dict[str, Any]) -> str:
    """A hash of a backbone's configuration without where it was loaded from (`_name_or_path`,
    a folder that differs between installs of the same model), so that the same model has the
    same identity in every environment: its feature cache and the runs over it carry over."""
    shown = {key: value for key, value in config.items() if key != "_name_or_path"}
    return hashlib.sha256(json.dumps(shown, sort_keys=True, default=str).encode()).hexdigest()[:16]
