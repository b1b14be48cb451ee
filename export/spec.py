"""Export specs: what each exported encoder must look like and how closely it must match.

Torch-free: the serving helper reads the spec an ONNX file carries in its metadata.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

# Serving reads specs without PyTorch, so the model type is for annotations only.
if TYPE_CHECKING:
    from crossan.zoo.models.recommender import Recommender

__all__ = ["DEFAULT_OPSET", "SPEC_METADATA_KEY", "TOLERANCE", "ExportSpec", "item_encoder_spec", "user_encoder_spec"]

DEFAULT_OPSET = 18
SPEC_METADATA_KEY = "crossan.export_spec"
"""ONNX metadata entry holding the spec as JSON, so a served model knows its own limits."""
TOLERANCE = 1e-4
"""Largest absolute difference from PyTorch allowed in float32 outputs."""


@dataclass(frozen=True)
class ExportSpec:
    """Names, dynamic axes, tolerance and opset of one exported encoder.

    `dynamic_axes` maps an input or output name to `{axis index: axis name}`; inputs that
    share an axis name share one symbolic dimension. `max_sizes` bounds named axes (the
    sequence length cannot exceed the number of learned positions).
    """

    name: str
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    dynamic_axes: dict[str, dict[int, str]]
    max_sizes: dict[str, int] = field(default_factory=dict)
    tolerance: float = TOLERANCE
    opset: int = DEFAULT_OPSET

    @property
    def onnx_file(self) -> str:
        return f"{self.name}.onnx"

    @property
    def torchscript_file(self) -> str:
        return f"{self.name}.pt"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, text: str) -> ExportSpec:
        """Inverse of `json.dumps(spec.to_dict())` (JSON turns axis indices into strings)."""
        values = json.loads(text)
        return cls(
            name=values["name"],
            input_names=tuple(values["input_names"]),
            output_names=tuple(values["output_names"]),
            dynamic_axes={k: {int(a): n for a, n in axes.items()} for k, axes in values["dynamic_axes"].items()},
            max_sizes=values["max_sizes"],
            tolerance=values["tolerance"],
            opset=values["opset"],
        )


def item_encoder_spec(model: Recommender, opset: int = DEFAULT_OPSET) -> ExportSpec:
    """`<item inputs> [B, ...] -> item_embedding [B, D]`; only the batch axis is dynamic."""
    inputs = tuple(model.item_input_names)
    axes = {name: {0: "batch"} for name in (*inputs, "item_embedding")}
    return ExportSpec("item_encoder", inputs, ("item_embedding",), axes, opset=opset)


def user_encoder_spec(model: Recommender, opset: int = DEFAULT_OPSET) -> ExportSpec:
    """`item_embeddings [B, T, D]`, `padding_mask [B, T]` -> `user_embedding [B, D]`, T <= max_seq_len."""
    axes = {
        "item_embeddings": {0: "batch", 1: "length"},
        "padding_mask": {0: "batch", 1: "length"},
        "user_embedding": {0: "batch"},
    }
    return ExportSpec(
        "user_encoder",
        ("item_embeddings", "padding_mask"),
        ("user_embedding",),
        axes,
        max_sizes={"length": model.config.max_seq_len},
        opset=opset,
    )
