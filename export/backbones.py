"""Export a run's frozen backbones (up to the kept per-layer states) and their preprocessing.

For each modality of the run, `export_backbones` writes `<modality>_backbone.onnx` (backbone
inputs -> `states_<modality> [B, S, W]`, the run's pooling included) and one entry of
`preprocessing.json` (the processor's settings as data, with `tokenizer.json` for text and the
mel filter bank for audio), so `crossan.export.content.ContentEncoder` embeds new items without
PyTorch. `validate_backbones` runs that serving path on real items of the run and compares
it with the PyTorch extractor that built the feature cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from crossan.export.content import ContentEncoder, backbone_file
from crossan.export.errors import NonFiniteOutputError, ValueMismatchError
from crossan.export.item_table import save_safetensors
from crossan.export.onnx_export import export_onnx
from crossan.export.preprocessing import (
    AUDIO_FILTERS_FILE,
    TOKENIZER_FILE,
    AudioPreprocessor,
    ImagePreprocessor,
    Preprocessor,
    TextPreprocessor,
    VideoPreprocessor,
    save_preprocessing,
)
from crossan.export.spec import DEFAULT_OPSET, ExportSpec
from crossan.zoo.backbones.extractor import CLIP_SECONDS, VIDEO_FRAMES, StateExtractor
from crossan.zoo.core.errors import ConfigError
from crossan.zoo.data.dataset import SequenceDataset

__all__ = [
    "BACKBONE_TOLERANCE",
    "BackboneStates",
    "BackboneCheck",
    "backbone_spec",
    "serving_preprocessor",
    "export_backbones",
    "item_sources",
    "validate_backbones",
]

BACKBONE_TOLERANCE = 1e-3
"""Largest absolute difference allowed between served and PyTorch states (float32 through up to
12 transformer layers, whose hidden states reach magnitudes of tens)."""
EXAMPLE_BATCH = 2


class BackboneStates(nn.Module):
    """Backbone inputs -> kept pooled states `[B, S, W]`: `StateExtractor.pooled_states` as a module."""

    def __init__(self, extractor: StateExtractor) -> None:
        super().__init__()
        self.extractor = extractor
        self.backbone = extractor.backbone.model

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.extractor.pooled_states(*inputs)


def backbone_spec(extractor: StateExtractor, opset: int = DEFAULT_OPSET) -> ExportSpec:
    """Batch axis dynamic; for text also the token axis, up to the run's `text_max_tokens`."""
    modality = extractor.modality
    output = f"states_{modality}"
    axes: dict[str, dict[int, str]] = {name: {0: "batch"} for name in (*extractor.input_names, output)}
    max_sizes: dict[str, int] = {}
    if modality == "text":
        for name in extractor.input_names:
            axes[name][1] = "tokens"
        max_sizes["tokens"] = extractor.text_max_tokens
    return ExportSpec(
        f"{modality}_backbone",
        extractor.input_names,
        (output,),
        axes,
        max_sizes=max_sizes,
        tolerance=BACKBONE_TOLERANCE,
        opset=opset,
    )


def _example_inputs(extractor: StateExtractor, preprocessor: Preprocessor) -> tuple[torch.Tensor, ...]:
    """The preprocessor's made-up inputs in the backbone's input order (a batch of `EXAMPLE_BATCH` >= 2,
    and titles of differing lengths, so the dynamic axes stay dynamic)."""
    inputs = preprocessor.example_inputs(EXAMPLE_BATCH)
    return tuple(torch.from_numpy(inputs[name]) for name in extractor.input_names)


def _pixel_settings(processor: Any) -> dict[str, Any]:
    return {
        "resample": int(processor.resample),
        "rescale_factor": float(processor.rescale_factor) if processor.do_rescale else None,
        "mean": [float(v) for v in processor.image_mean] if processor.do_normalize else None,
        "std": [float(v) for v in processor.image_std] if processor.do_normalize else None,
    }


def serving_preprocessor(extractor: StateExtractor, folder: Path) -> Preprocessor:
    """The torch-free preprocessor equal to `extractor`'s processor, with its data files written
    into `folder`; a `ConfigError` for processor settings the serving side does not reproduce."""
    processor, modality = extractor.backbone.processor, extractor.modality
    name = type(processor).__name__
    if modality == "text":
        backend = getattr(processor, "backend_tokenizer", None)
        if backend is None:
            raise ConfigError(f"{name} has no `tokenizers` backend (tokenizer.json); only fast tokenizers serve")
        (Path(folder) / TOKENIZER_FILE).write_text(backend.to_str(pretty=True))  # a full disk raises OSError
        return TextPreprocessor(extractor.text_max_tokens, folder=Path(folder))
    if modality == "audio":
        filters = getattr(processor, "mel_filters", None)
        if filters is None:
            raise ConfigError(
                f"{name} computes filter banks with torchaudio; the served NumPy path needs the "
                f"one transformers uses without it (uninstall torchaudio before exporting)"
            )
        save_safetensors(
            Path(folder) / AUDIO_FILTERS_FILE,
            {
                "mel_filters": np.ascontiguousarray(filters, dtype=np.float64),
                "window": np.ascontiguousarray(processor.window, dtype=np.float64),
            },
        )
        normalise = bool(processor.do_normalize)
        # Frame, hop and FFT sizes, pre-emphasis and floor are constants of ASTFeatureExtractor's code.
        return AudioPreprocessor(
            int(processor.sampling_rate),
            CLIP_SECONDS,
            int(processor.max_length),
            frame_length=400,
            hop_length=160,
            fft_length=512,
            preemphasis=0.97,
            mel_floor=1.192092955078125e-07,
            mean=float(processor.mean) if normalise else None,
            std=float(processor.std) if normalise else None,
            folder=Path(folder),
        )
    if getattr(processor, "do_pad", False):
        raise ConfigError(f"{name} pads images; the served preprocessing does not")
    size = processor.size
    if modality == "image":
        if getattr(processor, "do_center_crop", False) or not (size.get("height") and size.get("width")):
            raise ConfigError(
                f"{name}: only a resize to height x width without a crop is served, got size {dict(size)}"
            )
        return ImagePreprocessor(
            int(size["height"]), int(size["width"]), resize=bool(processor.do_resize), **_pixel_settings(processor)
        )
    crop = processor.crop_size
    if not (processor.do_resize and processor.do_center_crop and size.get("shortest_edge")):
        raise ConfigError(f"{name}: only a shortest-edge resize and a centre crop are served, got size {dict(size)}")
    return VideoPreprocessor(
        VIDEO_FRAMES,
        CLIP_SECONDS,
        int(size["shortest_edge"]),
        int(crop["height"]),
        int(crop["width"]),
        **_pixel_settings(processor),
    )


def export_backbones(
    extractors: dict[str, StateExtractor], out_dir: Path, opset: int = DEFAULT_OPSET
) -> list[ExportSpec]:
    """Write every modality's backbone ONNX and `preprocessing.json` (with its data files) into `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    specs, preprocessors = [], {}
    for modality, extractor in extractors.items():
        preprocessor = serving_preprocessor(extractor, out_dir)
        spec = backbone_spec(extractor, opset)
        export_onnx(
            BackboneStates(extractor), spec, _example_inputs(extractor, preprocessor), out_dir / backbone_file(modality)
        )
        specs.append(spec)
        preprocessors[modality] = preprocessor
    save_preprocessing(out_dir, preprocessors)
    return specs


def item_sources(dataset: SequenceDataset, modality: str, rows: list[int]) -> list[str]:
    """What a serving caller passes for catalogue rows: titles, cover paths, or video paths (the
    soundtrack is read from the video file)."""
    if modality == "text":
        titles = dataset.required_titles()
        return [titles[r] for r in rows]
    paths = dataset.required_cover_paths() if modality == "image" else dataset.required_video_paths()
    return [str(paths[r]) for r in rows]


@dataclass(frozen=True)
class BackboneCheck:
    """One modality's served states against the PyTorch extractor's, on real items."""

    modality: str
    provider: str
    num_items: int
    max_abs_error: float
    tolerance: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "modality": self.modality,
            "provider": self.provider,
            "items": self.num_items,
            "max_abs_error": self.max_abs_error,
            "tolerance": self.tolerance,
        }


def validate_backbones(
    extractors: dict[str, StateExtractor], encoder: ContentEncoder, dataset: SequenceDataset, rows: list[int]
) -> tuple[list[BackboneCheck], dict[str, np.ndarray]]:
    """Served states (torch-free preprocessing + ONNX backbone, on `encoder`'s provider) against
    `StateExtractor.encode` for catalogue `rows`; raises `ValueMismatchError` past the tolerance.
    Returns the checks and the served states by modality."""
    (provider,) = encoder.providers
    checks, served = [], {}
    for modality, extractor in extractors.items():
        states = encoder.states(modality, encoder.read(modality, item_sources(dataset, modality, rows)))
        reference = extractor.encode([extractor.read_item(dataset, r) for r in rows]).numpy()
        if not np.isfinite(states).all():
            count = int((~np.isfinite(states)).sum())
            raise NonFiniteOutputError(
                f"{backbone_file(modality)} on {provider}: output states_{modality} holds "
                f"{count} NaN or infinite values on {len(rows)} items"
            )
        error = float(np.abs(states - reference).max())
        if not error <= BACKBONE_TOLERANCE:
            raise ValueMismatchError(
                f"{backbone_file(modality)} on {provider}: served states differ from PyTorch's "
                f"by {error:.2e} (tolerance {BACKBONE_TOLERANCE:.0e}) on {len(rows)} items"
            )
        checks.append(BackboneCheck(modality, provider, len(rows), error, BACKBONE_TOLERANCE))
        served[modality] = states
    return checks, served
