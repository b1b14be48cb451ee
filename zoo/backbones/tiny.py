"""Tiny, randomly initialised backbones of the real architecture classes.

They exercise the whole pipeline (processors, hidden states, caching) in seconds on a CPU.
Their features carry the input's coarse content but no pretrained knowledge: results
with them say nothing about the method's quality on real data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

# The PIL processors: the default ones need torchvision, which this project does not install.
from transformers import (
    ASTConfig,
    ASTFeatureExtractor,
    ASTModel,
    AutoTokenizer,
    BertConfig,
    BertModel,
    PreTrainedModel,
    VideoMAEConfig,
    VideoMAEImageProcessorPil,
    VideoMAEModel,
    ViTConfig,
    ViTImageProcessorPil,
    ViTModel,
)

from crossan.zoo.backbones.minilm import minilm_dir

__all__ = ["TINY_WIDTH", "TINY_LAYERS", "tiny_backbone", "save_tiny_backbone"]

TINY_WIDTH = 64
TINY_LAYERS = 6
TINY_IMAGE_SIZE = 32
TINY_AUDIO_FRAMES = 304  # about 3 s of 10 ms filterbank frames
TINY_MEL_BINS = 64
# A wider weight init than the usual 0.02: with random weights, 0.02 leaves attention almost
# uniform and the pooled states nearly identical across items (BERT's CLS barely moves);
# 0.1 keeps them well apart, so the toy task is learnable in a few epochs.
TINY_INIT_RANGE = 0.1


def _text(shared: dict[str, Any]) -> tuple[type[PreTrainedModel], Any, Any]:
    # The BERT uncased WordPiece vocabulary ships with the MiniLM package: no download needed.
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
    return BertModel, BertConfig(vocab_size=tokenizer.vocab_size, max_position_embeddings=64, **shared), tokenizer


def _image(shared: dict[str, Any]) -> tuple[type[PreTrainedModel], Any, Any]:
    processor = ViTImageProcessorPil(size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE})
    return ViTModel, ViTConfig(image_size=TINY_IMAGE_SIZE, patch_size=8, **shared), processor


def _video(shared: dict[str, Any]) -> tuple[type[PreTrainedModel], Any, Any]:
    processor = VideoMAEImageProcessorPil(
        size={"shortest_edge": TINY_IMAGE_SIZE}, crop_size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE}
    )
    config = VideoMAEConfig(image_size=TINY_IMAGE_SIZE, patch_size=8, num_frames=16, tubelet_size=2, **shared)
    return VideoMAEModel, config, processor


def _audio(shared: dict[str, Any]) -> tuple[type[PreTrainedModel], Any, Any]:
    processor = ASTFeatureExtractor(num_mel_bins=TINY_MEL_BINS, max_length=TINY_AUDIO_FRAMES)
    config = ASTConfig(
        num_mel_bins=TINY_MEL_BINS, max_length=TINY_AUDIO_FRAMES, frequency_stride=16, time_stride=16, **shared
    )
    return ASTModel, config, processor


_BUILDERS = {"text": _text, "image": _image, "video": _video, "audio": _audio}


def tiny_backbone(
    modality: str, seed: int, width: int = TINY_WIDTH, layers: int = TINY_LAYERS
) -> tuple[PreTrainedModel, Any]:
    """A seeded tiny backbone and its processor for `modality`."""
    if modality not in _BUILDERS:
        raise ValueError(f"no tiny backbone for modality {modality!r}; known: {', '.join(_BUILDERS)}")
    shared = dict(
        hidden_size=width,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * width,
        initializer_range=TINY_INIT_RANGE,
    )
    model_cls, config, processor = _BUILDERS[modality](shared)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(config)
    return model, processor


def save_tiny_backbone(
    modality: str, directory: str | Path, seed: int = 0, width: int = TINY_WIDTH, layers: int = TINY_LAYERS
) -> Path:
    """Write a tiny backbone and its processor with `save_pretrained`: a local directory that
    `--backbone MODALITY=DIR` loads like any hub model (useful for offline tests)."""
    model, processor = tiny_backbone(modality, seed, width, layers)
    directory = Path(directory)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory
