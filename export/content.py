"""Embed items from their raw content with onnxruntime only: preprocessing, backbones, item encoder.

    encoder = ContentEncoder("weights/<run>/export")       # after `python -m crossan.export --with-backbones`
    encoder.embed({"text": ["Blue kettle"], "image": ["covers/new.jpg"]})   # -> [1, D] float32

For each modality of the item encoder: the preprocessor from `preprocessing.json` reads the
item's content (a title, or a media path), `<modality>_backbone.onnx` turns it into the kept
per-layer states, which are rounded to float16 as the training cache stores them, and
`item_encoder.onnx` maps all modalities' states to the item embedding; `variant="int8"` (or
"opt") runs the `.int8.onnx` (`.opt.onnx`) files of those graphs instead. Torch-free, like
`crossan.export.serve`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from crossan.export.errors import ExportFileError
from crossan.export.preprocessing import (
    AUDIO_FILTERS_FILE,
    PREPROCESSING_FILE,
    PREPROCESSORS,
    TOKENIZER_FILE,
    WITH_BACKBONES,
    Preprocessor,
    load_preprocessing,
)
from crossan.export.reading import check_records, open_session, read_records
from crossan.export.variants import FLOAT32, require_variant, variant_file, variant_providers
from crossan.zoo.core.errors import MissingFileError

__all__ = ["ITEM_ENCODER_FILE", "ContentEncoder", "backbone_file"]

ITEM_ENCODER_FILE = "item_encoder.onnx"
ITEM_ROWS_INPUT = "item_rows"
NO_ID_ROW = -1
"""What a new item passes as its catalogue row to a model with an ID term: no ID vector
(the value of `crossan.zoo.layers.item_ids.NO_ID_ROW`; this module stays torch-free)."""
BATCH_SIZE = 32


def backbone_file(modality: str) -> str:
    """File name of a modality's exported backbone."""
    return f"{modality}_backbone.onnx"


class ContentEncoder:
    """New items' raw content -> item embeddings, from an export folder with backbones."""

    def __init__(
        self,
        export_dir: str | Path,
        providers: Sequence[str | tuple[str, dict[str, str]]],
        variant: str = FLOAT32,
        options: ort.SessionOptions | None = None,
    ) -> None:
        """`variant` picks the graphs: "float32" (`item_encoder.onnx`, `<modality>_backbone.onnx`) or
        "opt" / "int8" (`item_encoder.int8.onnx`, ..., `crossan.export.variants`; CPU provider only).
        `options`: every session's `onnxruntime.SessionOptions` (thread counts, say); None, onnxruntime's defaults."""
        export_dir = Path(export_dir)
        providers = variant_providers(variant, providers)
        self.variant = variant
        records = read_records(export_dir)
        item_file = variant_file(ITEM_ENCODER_FILE, variant)
        backbone_files = [variant_file(backbone_file(m), variant) for m in PREPROCESSORS]
        check_records(
            export_dir,
            records,
            [item_file, PREPROCESSING_FILE, TOKENIZER_FILE, AUDIO_FILTERS_FILE, *backbone_files],
        )
        item_path = require_variant(export_dir / item_file, variant)
        self.item_session, self.item_spec = open_session(item_path, providers, "item_encoder", options)
        names = self.item_spec.input_names
        # A model with an ID term also takes catalogue rows: new items have none (NO_ID_ROW).
        self.takes_item_rows = bool(names) and names[-1] == ITEM_ROWS_INPUT
        states_names = names[:-1] if self.takes_item_rows else names
        if not states_names or not all(name.startswith("states_") for name in states_names):
            raise ValueError(
                f"{item_path} takes {', '.join(names)}, not backbone states: "
                f"this model does not embed items from their content"
            )
        self.modalities = tuple(name.removeprefix("states_") for name in states_names)
        self.preprocessors: dict[str, Preprocessor] = load_preprocessing(export_dir)
        self.backbones: dict[str, ort.InferenceSession] = {}
        for modality in self.modalities:
            path = export_dir / backbone_file(modality)
            if modality not in self.preprocessors:
                raise ExportFileError(
                    f"{export_dir / PREPROCESSING_FILE}: no {modality} settings, which "
                    f"{ITEM_ENCODER_FILE} needs; {WITH_BACKBONES}"
                )
            if not path.is_file():
                raise MissingFileError(f"{path}: missing; {WITH_BACKBONES}")
            path = require_variant(export_dir / variant_file(path.name, variant), variant)
            self.backbones[modality] = open_session(path, providers, f"{modality}_backbone", options)[0]

    @property
    def providers(self) -> list[str]:
        """The execution provider each session runs on (first choice of each), deduplicated."""
        sessions = [self.item_session, *self.backbones.values()]
        return sorted({s.get_providers()[0] for s in sessions})

    def read(self, modality: str, sources: Sequence[str | Path]) -> list[Any]:
        """Raw contents of `modality` from titles or media paths (errors name the file)."""
        return [self.preprocessors[modality].read(source) for source in sources]

    def states(self, modality: str, contents: Sequence[Any]) -> np.ndarray:
        """Kept per-layer states `[B, S, W]` (float32) of raw `contents`, before the float16 rounding."""
        preprocessor, session = self.preprocessors[modality], self.backbones[modality]
        chunks = []
        for start in range(0, len(contents), BATCH_SIZE):
            inputs = preprocessor(contents[start : start + BATCH_SIZE])
            chunks.append(session.run(None, {name: inputs[name] for name in preprocessor.input_names})[0])
        return np.concatenate(chunks).astype(np.float32, copy=False)

    def embed_states(self, states: Mapping[str, np.ndarray], catalogue_rows: Sequence[int] | None = None) -> np.ndarray:
        """Item embeddings `[B, D]` from per-modality states, rounded to float16 as the cache
        stores them. New items have no ID vector; `catalogue_rows` re-embeds known items with
        theirs (a model with an ID term; validation)."""
        feeds = {f"states_{m}": states[m].astype(np.float16).astype(np.float32) for m in self.modalities}
        if self.takes_item_rows:
            count = len(next(iter(feeds.values())))
            rows = np.full(count, NO_ID_ROW) if catalogue_rows is None else np.asarray(catalogue_rows)
            feeds[ITEM_ROWS_INPUT] = rows.astype(np.int64)
        return self.item_session.run(list(self.item_spec.output_names), feeds)[0]

    def embed(self, sources: Mapping[str, Sequence[str | Path]]) -> np.ndarray:
        """Item embeddings `[B, D]` of new items given by content source per modality
        (`text`: titles; `image`: cover paths; `video` and `audio`: video or soundtrack paths)."""
        missing = [m for m in self.modalities if m not in sources]
        extra = sorted(set(sources) - set(self.modalities))
        if missing or extra:
            raise ValueError(
                f"the item encoder takes {', '.join(self.modalities)}; "
                + (f"missing {', '.join(missing)}" if missing else f"unused {', '.join(extra)}")
            )
        counts = {m: len(sources[m]) for m in self.modalities}
        if len(set(counts.values())) != 1:
            raise ValueError(f"every modality needs one source per item, got {counts}")
        return self.embed_states({m: self.states(m, self.read(m, sources[m])) for m in self.modalities})
