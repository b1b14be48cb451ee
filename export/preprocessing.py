"""Turning a new item's raw content into backbone inputs without PyTorch or transformers.

`python -m crossan.export --with-backbones` writes `preprocessing.json`: for every exported backbone,
the settings of the transformers processor that prepared the training catalogue, as data
(plus `tokenizer.json` for text and the mel filter bank for audio). The classes here read those
settings and reproduce the processors with the `tokenizers` library, PIL and NumPy only, so a
serving process embeds new items with onnxruntime alone. The export validates each against
the processor it replaces on real items of the run.

| modality | content             | backbone inputs                                |
|----------|---------------------|------------------------------------------------|
| text     | title (str)         | `input_ids`, `attention_mask` `[B, tokens]`    |
| image    | cover image path    | `pixel_values [B, 3, H, W]`                    |
| video    | video file path     | `pixel_values [B, frames, 3, H, W]`            |
| audio    | video/audio path    | `input_values [B, time frames, mel bins]`      |
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
from PIL import Image

from crossan.export.errors import ExportFileError
from crossan.export.reading import one_line, read_json, require_file

__all__ = [
    "PREPROCESSING_FILE",
    "TOKENIZER_FILE",
    "AUDIO_FILTERS_FILE",
    "Preprocessor",
    "TextPreprocessor",
    "ImagePreprocessor",
    "VideoPreprocessor",
    "AudioPreprocessor",
    "save_preprocessing",
    "load_preprocessing",
]

PREPROCESSING_FILE = "preprocessing.json"
TOKENIZER_FILE = "tokenizer.json"
AUDIO_FILTERS_FILE = "audio_filters.safetensors"
FORMAT_VERSION = 1
WITH_BACKBONES = "export the backbones with `python -m crossan.export --run <run> --with-backbones`"


class Preprocessor(Protocol):
    """One modality's raw content -> backbone inputs."""

    modality: ClassVar[str]
    input_names: ClassVar[tuple[str, ...]]

    def read(self, source: str | Path) -> Any:
        """The raw content of one item (a title is its own content; media are read from a path)."""

    def __call__(self, contents: Sequence[Any]) -> dict[str, np.ndarray]:
        """Backbone inputs for a batch of contents, by input name."""

    def to_dict(self) -> dict[str, Any]: ...

    def example_inputs(self, batch: int) -> dict[str, np.ndarray]:
        """Made-up backbone inputs of `batch` items in the served layout, by input name, the same on
        every call: what an export traces the backbone with."""


def _example_values(shape: tuple[int, ...]) -> np.ndarray:
    """Seeded standard-normal float32 values of `shape` (made-up pixels or filter banks)."""
    return np.random.default_rng(0).standard_normal(shape, dtype=np.float32)


@dataclass
class TextPreprocessor:
    """WordPiece (or any `tokenizers` model) with the special tokens, cut at `max_tokens`, padded
    to the longest title of the batch: what the transformers tokenizer did with `padding=True,
    truncation=True, max_length=max_tokens`."""

    modality: ClassVar[str] = "text"
    input_names: ClassVar[tuple[str, ...]] = ("input_ids", "attention_mask")
    max_tokens: int
    tokenizer_file: str = TOKENIZER_FILE
    folder: Path = field(default=Path("."), repr=False)

    def __post_init__(self) -> None:
        from tokenizers import Tokenizer

        path = require_file(Path(self.folder) / self.tokenizer_file, WITH_BACKBONES)
        try:
            self.tokenizer = Tokenizer.from_file(str(path))
        except Exception as error:  # tokenizers raises a bare Exception for unreadable files
            raise ExportFileError(f"{path}: not a readable tokenizer ({one_line(error)}); {WITH_BACKBONES}") from error
        # Right padding to the batch's longest title (the file's own padding settings replaced, its pad id kept).
        pad_id = self._pad_id()
        self.tokenizer.enable_padding(pad_id=pad_id, pad_token=self.tokenizer.id_to_token(pad_id) or "[PAD]")
        self.tokenizer.enable_truncation(self.max_tokens)

    def read(self, source: str | Path) -> str:
        return str(source)

    def __call__(self, contents: Sequence[str]) -> dict[str, np.ndarray]:
        encodings = self.tokenizer.encode_batch([str(title) for title in contents])
        return {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
        }

    def _pad_id(self) -> int:
        """The pad id the tokenizer file records (the one transformers padded with), else its pad token's."""
        padding = self.tokenizer.padding
        if padding is not None:
            return int(padding["pad_id"])
        for token in ("[PAD]", "<pad>"):
            token_id = self.tokenizer.token_to_id(token)
            if token_id is not None:
                return token_id
        return 0

    def to_dict(self) -> dict[str, Any]:
        return {"max_tokens": self.max_tokens, "tokenizer_file": self.tokenizer_file}

    def example_inputs(self, batch: int) -> dict[str, np.ndarray]:
        """Made-up titles of 1 to `batch` words, tokenized: ids the backbone knows, in rows of differing
        lengths (so padded) unless `max_tokens` cuts them all."""
        return self([" ".join(["example"] * (1 + row)) for row in range(batch)])


def _resize(image: Image.Image, height: int, width: int, resample: int) -> Image.Image:
    return image.resize((width, height), resample=Image.Resampling(resample))


def _shortest_edge_size(height: int, width: int, shortest_edge: int) -> tuple[int, int]:
    """(height, width) with the shorter side at `shortest_edge` and the longer one scaled and
    truncated, as transformers computes it for `size={"shortest_edge": n}`."""
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(shortest_edge * long / short)
    return (new_long, shortest_edge) if width <= height else (shortest_edge, new_long)


@dataclass
class PixelSteps:
    """The PIL image processor's steps after resizing, on a channels-first uint8 array: centre crop
    (optional), rescale, normalise; the result is float32 `[3, H, W]`."""

    rescale_factor: float | None
    mean: list[float] | None
    std: list[float] | None
    crop: tuple[int, int] | None = None

    def __call__(self, image: Image.Image) -> np.ndarray:
        pixels: np.ndarray = np.moveaxis(np.asarray(image), -1, 0)
        if self.crop is not None:
            height, width = pixels.shape[1:]
            top, left = (height - self.crop[0]) // 2, (width - self.crop[1]) // 2
            if top < 0 or left < 0:
                raise ValueError(f"cannot crop {height}x{width} pixels to {self.crop[0]}x{self.crop[1]}")
            pixels = pixels[:, top : top + self.crop[0], left : left + self.crop[1]]
        if self.rescale_factor is None:
            values = pixels.astype(np.float32)
        else:
            # In float64, then float32: transformers' order, so the pixels are equal to the last bit.
            values = (pixels.astype(np.float64) * self.rescale_factor).astype(np.float32)
        if self.mean is not None and self.std is not None:
            mean = np.asarray(self.mean, dtype=np.float32)[:, None, None]
            std = np.asarray(self.std, dtype=np.float32)[:, None, None]
            values = ((values - mean) / std).astype(np.float32)
        return values


@dataclass
class ImagePreprocessor:
    """RGB, resize to `height` x `width` with PIL's `resample` filter, rescale, normalise: the
    steps of transformers' PIL image processors (`ViTImageProcessorPil`)."""

    modality: ClassVar[str] = "image"
    input_names: ClassVar[tuple[str, ...]] = ("pixel_values",)
    height: int
    width: int
    resample: int
    rescale_factor: float | None
    mean: list[float] | None
    std: list[float] | None
    resize: bool = True

    def read(self, source: str | Path) -> Image.Image:
        from crossan.zoo.data.media import read_cover

        return read_cover(source)

    def __call__(self, contents: Sequence[Image.Image]) -> dict[str, np.ndarray]:
        steps = PixelSteps(self.rescale_factor, self.mean, self.std)
        images = [
            _resize(image.convert("RGB"), self.height, self.width, self.resample)
            if self.resize
            else image.convert("RGB")
            for image in contents
        ]
        return {"pixel_values": np.stack([steps(image) for image in images])}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def example_inputs(self, batch: int) -> dict[str, np.ndarray]:
        return {"pixel_values": _example_values((batch, 3, self.height, self.width))}


@dataclass
class VideoPreprocessor:
    """`frames` frames sampled evenly from the first `seconds` (as the feature cache samples
    them), each resized on its shortest edge, centre-cropped, rescaled and normalised: the steps
    of `VideoMAEImageProcessorPil`."""

    modality: ClassVar[str] = "video"
    input_names: ClassVar[tuple[str, ...]] = ("pixel_values",)
    frames: int
    seconds: float
    shortest_edge: int
    crop_height: int
    crop_width: int
    resample: int
    rescale_factor: float | None
    mean: list[float] | None
    std: list[float] | None

    def read(self, source: str | Path) -> list[np.ndarray]:
        from crossan.zoo.data.media import read_video_frames

        return read_video_frames(source, num_frames=self.frames, seconds=self.seconds)

    def _frame(self, frame: np.ndarray, steps: PixelSteps) -> np.ndarray:
        image = Image.fromarray(np.ascontiguousarray(frame, dtype=np.uint8)).convert("RGB")
        height, width = _shortest_edge_size(image.height, image.width, self.shortest_edge)
        return steps(_resize(image, height, width, self.resample))

    def __call__(self, contents: Sequence[Sequence[np.ndarray]]) -> dict[str, np.ndarray]:
        steps = PixelSteps(self.rescale_factor, self.mean, self.std, crop=(self.crop_height, self.crop_width))
        return {"pixel_values": np.stack([np.stack([self._frame(f, steps) for f in video]) for video in contents])}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def example_inputs(self, batch: int) -> dict[str, np.ndarray]:
        return {"pixel_values": _example_values((batch, self.frames, 3, self.crop_height, self.crop_width))}


@dataclass
class AudioPreprocessor:
    """The first `seconds` of the soundtrack at `sampling_rate`, as Kaldi-style log-mel filter banks
    (25 ms Hann frames every 10 ms, DC offset removed, pre-emphasis, power spectrum, the stored
    mel filters), cut or zero-padded to `max_length` frames and normalised with the AudioSet
    `mean` and `std`: the NumPy path of transformers' `ASTFeatureExtractor`."""

    modality: ClassVar[str] = "audio"
    input_names: ClassVar[tuple[str, ...]] = ("input_values",)
    sampling_rate: int
    seconds: float
    max_length: int
    frame_length: int
    hop_length: int
    fft_length: int
    preemphasis: float
    mel_floor: float
    mean: float | None
    std: float | None
    filters_file: str = AUDIO_FILTERS_FILE
    folder: Path = field(default=Path("."), repr=False)

    def __post_init__(self) -> None:
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        path = require_file(Path(self.folder) / self.filters_file, WITH_BACKBONES)
        try:
            tensors = load_file(str(path))
        except SafetensorError as error:
            raise ExportFileError(
                f"{path}: not a readable safetensors file ({one_line(error)}); {WITH_BACKBONES}"
            ) from error
        missing = [name for name in ("mel_filters", "window") if name not in tensors]
        if missing:
            raise ExportFileError(f"{path}: no {' or '.join(missing)} tensor; {WITH_BACKBONES}")
        self.mel_filters, self.window = tensors["mel_filters"], tensors["window"]

    def read(self, source: str | Path) -> np.ndarray:
        from crossan.zoo.data.media import read_audio

        return read_audio(source, sampling_rate=self.sampling_rate, seconds=self.seconds)

    def filter_banks(self, waveform: np.ndarray) -> np.ndarray:
        """Log-mel filter banks `[max_length, mel bins]` (float32) of one mono waveform."""
        wave = np.asarray(waveform, dtype=np.float32).astype(np.float64)
        count = 1 + (wave.size - self.frame_length) // self.hop_length
        if count < 1:
            raise ValueError(f"a waveform of {wave.size} samples is shorter than one {self.frame_length}-sample frame")
        starts = np.arange(count)[:, None] * self.hop_length
        frames = wave[starts + np.arange(self.frame_length)[None, :]]
        frames = frames - frames.mean(axis=1, keepdims=True)
        frames = np.concatenate(
            [frames[:, :1] * (1 - self.preemphasis), frames[:, 1:] - self.preemphasis * frames[:, :-1]], axis=1
        )
        frames = frames * self.window.astype(np.float64)
        # transformers keeps the spectrum in complex64 before taking its power; so does this.
        spectrum = np.fft.rfft(frames, n=self.fft_length, axis=1).astype(np.complex64)
        power = np.abs(spectrum, dtype=np.float64) ** 2
        banks = np.log(np.maximum(self.mel_floor, power @ self.mel_filters.astype(np.float64)))
        out = np.zeros((self.max_length, banks.shape[1]), dtype=np.float64)
        kept = min(self.max_length, banks.shape[0])
        out[:kept] = banks[:kept]
        if self.mean is not None and self.std is not None:
            out = (out - self.mean) / (self.std * 2)
        return out.astype(np.float32)

    def __call__(self, contents: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        return {"input_values": np.stack([self.filter_banks(wave) for wave in contents])}

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values.pop("folder")
        return values

    def example_inputs(self, batch: int) -> dict[str, np.ndarray]:
        return {"input_values": _example_values((batch, self.max_length, self.mel_filters.shape[1]))}


PREPROCESSORS: dict[str, type] = {
    p.modality: p for p in (TextPreprocessor, ImagePreprocessor, VideoPreprocessor, AudioPreprocessor)
}
_NEEDS_FOLDER = ("text", "audio")


def save_preprocessing(folder: Path, preprocessors: dict[str, Preprocessor]) -> Path:
    """Write `preprocessing.json` (the settings of every modality's preprocessor) into `folder`."""
    path = Path(folder) / PREPROCESSING_FILE
    document = {
        "format_version": FORMAT_VERSION,
        "modalities": {modality: p.to_dict() for modality, p in preprocessors.items()},
    }
    path.write_text(json.dumps(document, indent=1) + "\n")
    return path


def load_preprocessing(folder: Path) -> dict[str, Preprocessor]:
    """The preprocessors `preprocessing.json` in `folder` describes, by modality; a missing,
    malformed or foreign file (or data file it names) raises naming the file."""
    path = Path(folder) / PREPROCESSING_FILE
    document = read_json(path, WITH_BACKBONES)
    version = document.get("format_version") if isinstance(document, dict) else None
    if version != FORMAT_VERSION:
        raise ExportFileError(f"{path}: format version {version!r}, this code reads {FORMAT_VERSION}")
    modalities = document.get("modalities")
    if not isinstance(modalities, dict) or not all(isinstance(v, dict) for v in modalities.values()):
        raise ExportFileError(f"{path}: 'modalities' is not a map of modality to settings; {WITH_BACKBONES}")
    preprocessors: dict[str, Preprocessor] = {}
    for modality, values in modalities.items():
        if modality not in PREPROCESSORS:
            raise ExportFileError(f"{path}: unknown modality {modality!r}; known: {', '.join(PREPROCESSORS)}")
        extra = {"folder": Path(folder)} if modality in _NEEDS_FOLDER else {}
        try:
            preprocessors[modality] = PREPROCESSORS[modality](**values, **extra)
        except TypeError as error:  # a missing or unknown setting
            raise ExportFileError(f"{path}: bad {modality} settings ({one_line(error)}); {WITH_BACKBONES}") from error
    return preprocessors
