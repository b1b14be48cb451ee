"""Per-layer pooled hidden states of a frozen backbone, and its processors' inputs, over a catalogue."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from crossan.zoo.backbones.loading import Backbone
from crossan.zoo.core.errors import ConfigError
from crossan.zoo.data.dataset import SequenceDataset

__all__ = ["kept_state_indices", "StateExtractor", "TEXT_MAX_TOKENS", "VIDEO_FRAMES", "CLIP_SECONDS"]

TEXT_MAX_TOKENS = 30
VIDEO_FRAMES = 16
CLIP_SECONDS = 3.0


def kept_state_indices(num_layers: int, side_layers: int) -> list[int]:
    """Hidden-state indices kept by LayerDrop: `side_layers + 1` evenly spaced indices over
    `0..num_layers` (index 0 is the embedding output), first and last included.

    For 12 layers and 6 side layers: 0, 2, 4, 6, 8, 10, 12.
    """
    if side_layers < 1 or side_layers > num_layers:
        raise ConfigError(
            f"cannot keep {side_layers + 1} distinct states of a {num_layers}-layer backbone; "
            f"use 1..{num_layers} side layers"
        )
    return [round(i * num_layers / side_layers) for i in range(side_layers + 1)]


class StateExtractor:
    """Reads an item's raw content, runs the processor and the backbone, keeps pooled states.

    Text is cut at `text_max_tokens` tokens (30 in the paper, which suits MicroLens titles;
    longer product titles may want more). Pooling `cls` takes position 0 of every kept hidden
    state (before any final LayerNorm or head; for VideoMAE, which has no CLS token, that is
    its first tubelet token, as in the reference implementation); `mean` averages the
    non-padding tokens.
    """

    def __init__(self, backbone: Backbone, side_layers: int, text_max_tokens: int = TEXT_MAX_TOKENS) -> None:
        if text_max_tokens < 1:
            raise ConfigError(f"text_max_tokens must be at least 1, got {text_max_tokens}")
        self.backbone = backbone
        self.modality = backbone.spec.modality
        self.indices = kept_state_indices(backbone.num_layers, side_layers)
        self.text_max_tokens = text_max_tokens
        if self.modality == "text":
            positions = int(backbone.model.config.max_position_embeddings)
            if text_max_tokens > positions:
                raise ConfigError(
                    f"text_max_tokens {text_max_tokens} exceeds the text backbone's {positions} positions"
                )

    @property
    def output_shape(self) -> tuple[int, int]:
        return len(self.indices), self.backbone.width

    def preprocessing(self) -> dict[str, Any]:
        """Everything about input preparation that changes the features (cache metadata)."""
        parameters: dict[str, Any] = {"kept_indices": self.indices}
        if self.modality == "text":
            parameters["max_tokens"] = self.text_max_tokens
        else:
            parameters["processor"] = {
                k: v
                for k, v in self.backbone.processor.to_dict().items()
                if isinstance(v, (int, float, str, bool, list, dict, type(None)))
            }
        if self.modality in ("video", "audio"):
            parameters.update(clip_seconds=CLIP_SECONDS, frames=VIDEO_FRAMES)
        return parameters

    def read_item(self, dataset: SequenceDataset, row: int) -> Any:
        """Raw content of catalogue row `row` (raises `DataError` for unreadable media)."""
        from crossan.zoo.data.media import read_audio, read_cover, read_video_frames

        if self.modality == "text":
            return dataset.required_titles()[row]
        if self.modality == "image":
            return read_cover(dataset.required_cover_paths()[row])
        videos = dataset.required_video_paths()
        if self.modality == "video":
            return read_video_frames(videos[row], num_frames=VIDEO_FRAMES, seconds=CLIP_SECONDS)
        return read_audio(videos[row], sampling_rate=self.backbone.processor.sampling_rate, seconds=CLIP_SECONDS)

    def model_inputs(self, contents: list[Any], pad_to_limit: bool = False) -> dict[str, torch.Tensor]:
        """The processor's outputs for a batch of raw contents, by name (a superset of `input_names`).

        Titles are padded to the batch's longest, or with `pad_to_limit` to `text_max_tokens`
        (stored inputs: every row the same width)."""
        processor = self.backbone.processor
        if self.modality == "text":
            return dict(
                processor(
                    contents,
                    padding="max_length" if pad_to_limit else True,
                    truncation=True,
                    max_length=self.text_max_tokens,
                    return_tensors="pt",
                )
            )
        if self.modality == "image":
            return {"pixel_values": processor(images=contents, return_tensors="pt")["pixel_values"]}
        if self.modality == "video":
            return {"pixel_values": processor(contents, return_tensors="pt")["pixel_values"]}
        return {
            "input_values": processor(
                [np.asarray(c, dtype=np.float32) for c in contents],
                sampling_rate=processor.sampling_rate,
                return_tensors="pt",
            )["input_values"]
        }

    @property
    def input_names(self) -> tuple[str, ...]:
        """Names of the backbone inputs `pooled_states` takes, in order."""
        return {"text": ("input_ids", "attention_mask"), "audio": ("input_values",)}.get(
            self.modality, ("pixel_values",)
        )

    def pooled_states(self, *inputs: torch.Tensor) -> torch.Tensor:
        """Kept pooled states `[B, num_states, width]` (float32) from backbone inputs in
        `input_names` order: the part of `encode` after the processor (what the backbone export runs)."""
        named = dict(zip(self.input_names, inputs, strict=True))
        hidden = self.backbone.model(**named, output_hidden_states=True).hidden_states
        kept = torch.stack([hidden[i] for i in self.indices], dim=1)  # [B, S, tokens, W]
        if self.backbone.spec.pooling == "cls":
            return kept[:, :, 0].float()
        mask = named.get("attention_mask")
        if mask is None:
            return kept.mean(dim=2).float()
        weights = mask[:, None, :, None].to(kept.dtype)
        return ((kept * weights).sum(dim=2) / weights.sum(dim=2).clamp_min(1)).float()

    @torch.inference_mode()
    def encode(self, contents: list[Any], device: torch.device | str = "cpu") -> torch.Tensor:
        """Kept pooled states `[B, num_states, width]` (float32) for a batch of raw contents."""
        inputs = self.model_inputs(contents)
        return self.pooled_states(*(inputs[name].to(device) for name in self.input_names))

    def encode_rows(
        self, dataset: SequenceDataset, rows: list[int], device: torch.device | str = "cpu"
    ) -> torch.Tensor:
        """Kept pooled states `[len(rows), S, W]` (float32) of catalogue `rows`, from their raw content."""
        return self.encode([self.read_item(dataset, row) for row in rows], device)

    def stored_input_rows(self, dataset: SequenceDataset, rows: list[int]) -> dict[str, torch.Tensor]:
        """The backbone inputs (`input_names`) of catalogue `rows`, titles padded to the token limit,
        as stored for the uncached models."""
        if self.modality not in ("text", "image"):
            raise ConfigError(f"stored inputs cover text and image; {self.modality} is not served to uncached models")
        inputs = self.model_inputs([self.read_item(dataset, row) for row in rows], pad_to_limit=True)
        return {name: inputs[name] for name in self.input_names}
