"""Serve recommendations from an export folder with onnxruntime, no PyTorch model needed.

    recommender = OnnxRecommender("weights/<run>/export")
    recommender.recommend([["i0001", "i0017"], ["i0042"]], k=10)   # -> two lists of 10 item ids
    recommender.add_items(["i9001"], {"text": ["Blue kettle"], "image": ["new/cover.jpg"]})  # new items
    OnnxRecommender("weights/<run>/export", index="faiss")          # approximate top-k (crossan.export.ann_index)

Imports only NumPy, onnxruntime, safetensors, faiss, and for new items `tokenizers`, PIL and
PyAV, never PyTorch, transformers or the model code, so a serving process stays small
(tests/test_serving_imports.py checks it).
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import onnxruntime as ort

from crossan.export.ann_index import HnswParameters, IndexParameters, ann_top_k_rows, open_index, save_index
from crossan.export.content import ContentEncoder
from crossan.export.item_table import TABLE_FILE, load_item_table, save_item_table
from crossan.export.providers import execution_providers
from crossan.export.ranking import history_window, top_k_rows
from crossan.export.spec import SPEC_METADATA_KEY, ExportSpec

__all__ = ["UnknownItemError", "OnnxRecommender"]

USER_ENCODER_FILE = "user_encoder.onnx"
INDEX_KINDS = ("exact", "faiss")


class UnknownItemError(ValueError):
    """A history names item ids that the exported item table does not contain."""

    def __init__(self, unknown: list[str], num_items: int) -> None:
        shown = ", ".join(unknown[:10]) + (f" and {len(unknown) - 10} more" if len(unknown) > 10 else "")
        super().__init__(f"{len(unknown)} unknown item id(s): {shown} (the item table has {num_items} items; "
                         f"embed new items with item_encoder.onnx and re-export the table)")
        self.unknown = unknown


class OnnxRecommender:
    """Top-k item ids for users given by their item-id histories.

    Loads `user_encoder.onnx` and `item_embeddings.safetensors` from an export folder. A
    user's last `max_len` items (the limit the encoder was exported with) form the user
    vector; items are ranked by dot product with it; items in the history are excluded.

    `add_items` embeds new items from their raw content (titles, cover images, videos) with the
    exported backbones (`python -m crossan.export --with-backbones`) and adds them to the ranking.

    Sessions run on CUDA where onnxruntime-gpu and a GPU are present, else on the CPU
    (`crossan.export.providers`); `providers` says which ran.

    `index="exact"` (the default) scores every catalogue item. `index="faiss"` searches a FAISS
    index instead (`index_parameters`: `crossan.export.ann_index.HnswParameters()` by default, or
    `IvfParameters`), built on first use and saved beside the table: approximate, but its cost
    does not grow with the catalogue the way a full scan does.
    """

    def __init__(self, export_dir: str | Path, providers: Sequence[str] | None = None,
                 index: Literal["exact", "faiss"] = "exact",
                 index_parameters: IndexParameters | None = None) -> None:
        if index not in INDEX_KINDS:
            raise ValueError(f"index must be one of {', '.join(map(repr, INDEX_KINDS))}, got {index!r}")
        if index_parameters is not None and index != "faiss":
            raise ValueError(f"index_parameters apply to index='faiss' only, got index={index!r}")
        export_dir = Path(export_dir)
        self.export_dir = export_dir
        self._requested_providers = list(providers or execution_providers())
        self._content: ContentEncoder | None = None
        for name in (USER_ENCODER_FILE, TABLE_FILE):
            if not (export_dir / name).is_file():
                raise FileNotFoundError(f"{export_dir / name}: missing; write it with `python -m crossan.export --run <run>`")
        self.session = ort.InferenceSession(str(export_dir / USER_ENCODER_FILE),
                                            providers=self._requested_providers)
        self.spec = ExportSpec.from_json(self.session.get_modelmeta().custom_metadata_map[SPEC_METADATA_KEY])
        self.max_len = self.spec.max_sizes["length"]
        self.item_table, self.item_ids = load_item_table(export_dir / TABLE_FILE)
        self._index = {item: i + 1 for i, item in enumerate(self.item_ids)}
        self.index_parameters = index_parameters or HnswParameters()
        self.ann_index = (open_index(export_dir / TABLE_FILE, self.item_table, self.index_parameters)
                          if index == "faiss" else None)

    @property
    def providers(self) -> list[str]:
        """The execution provider each loaded session runs on, deduplicated (e.g. `["CPUExecutionProvider"]`)."""
        used = {self.session.get_providers()[0]}
        if self._content is not None:
            used.update(self._content.providers)
        return sorted(used)

    def add_items(self, item_ids: Sequence[str], content: Mapping[str, Sequence[str | Path]],
                  save: bool = False) -> np.ndarray:
        """Embed new items from their raw content and add them to the ranking; returns their
        embeddings `[len(item_ids), D]`.

        `content` maps each modality of the model to one source per item: `text` the titles,
        `image` cover image paths, `video` and `audio` video files (the soundtrack is read from
        the video, as in training). `save=True` also rewrites `item_embeddings.safetensors` (and
        the FAISS index beside it) so the items stay after a restart.
        """
        item_ids = [str(item) for item in item_ids]
        if not item_ids:
            raise ValueError("no items to add")
        repeated = sorted(item for item, count in Counter(item_ids).items() if count > 1)
        known = sorted(item for item in set(item_ids) if item in self._index)
        if repeated or known:
            raise ValueError("item ids must be new and distinct: "
                             + (f"repeated {', '.join(repeated[:10])}" if repeated
                                else f"already in the table: {', '.join(known[:10])}"))
        if self._content is None:
            self._content = ContentEncoder(self.export_dir, self._requested_providers)
        lengths = {m: len(sources) for m, sources in content.items()}
        if any(n != len(item_ids) for n in lengths.values()):
            raise ValueError(f"{len(item_ids)} item ids, but content sources per modality {lengths}")
        embeddings = self._content.embed(content)
        first_row = len(self.item_ids)
        self.item_table = np.concatenate([self.item_table, embeddings])
        self.item_ids = [*self.item_ids, *item_ids]
        self._index.update({item: first_row + i + 1 for i, item in enumerate(item_ids)})
        if self.ann_index is not None:
            self.ann_index.add(np.ascontiguousarray(embeddings, dtype=np.float32))
        if save:
            table_path = save_item_table(self.export_dir / TABLE_FILE, self.item_table, self.item_ids,
                                         source=f"{TABLE_FILE} with {len(item_ids)} item(s) added from raw content")
            if self.ann_index is not None:
                save_index(table_path, self.item_table, self.ann_index, self.index_parameters)
        return embeddings

    def recommend(self, histories: Sequence[Sequence[str]], k: int = 10) -> list[list[str]]:
        """For each history (item ids, oldest first), the `k` best item ids not in it, best first."""
        unknown = sorted({item for history in histories for item in history if item not in self._index})
        if unknown:
            raise UnknownItemError(unknown, len(self.item_ids))
        empty = [i for i, history in enumerate(histories) if not history]
        if empty:
            raise ValueError(f"histories {empty} are empty; a user needs at least one item")
        if k < 1:
            raise ValueError(f"k must be positive, got {k}")
        indices = [np.array([self._index[item] for item in history], dtype=np.int64) for history in histories]
        rows, padding_mask = history_window(indices, self.max_len)
        embeddings_name, mask_name = self.spec.input_names
        (user_vectors,) = self.session.run(list(self.spec.output_names), {
            embeddings_name: self.item_table[rows], mask_name: padding_mask})
        if self.ann_index is None:
            ranked = top_k_rows(user_vectors, self.item_table, indices, k)
        else:
            ranked = ann_top_k_rows(self.ann_index, user_vectors, self.item_table, indices, k)
        return [[self.item_ids[row] for row in user_rows] for user_rows in ranked]
