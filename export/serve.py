"""Serve recommendations from an export folder with onnxruntime, no PyTorch model needed.

    recommender = OnnxRecommender("weights/<run>/export")
    recommender.recommend([["i0001", "i0017"], ["i0042"]], k=10)   # -> two lists of 10 item ids
    recommender.recommend_scored([["i0001", "i0017"]], k=10)        # -> [[(item id, score), ...]]
    recommender.add_items(["i9001"], {"text": ["Blue kettle"], "image": ["new/cover.jpg"]})  # new items
    OnnxRecommender("weights/<run>/export", index="faiss")          # approximate top-k (crossan.export.ann_index)
    OnnxRecommender("weights/<run>/export", variant="int8")         # the int8 graphs (export --quantize int8)
    OnnxRecommender("weights/<run>/export", threads=4)              # bound onnxruntime's (and FAISS's) threads

Imports only NumPy, onnxruntime, safetensors, faiss, and for new items `tokenizers`, PIL and
PyAV, never PyTorch, transformers or the model code, so a serving process stays small
(tests/test_serving_imports.py checks it).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import faiss
import numpy as np
import onnxruntime as ort

from crossan.export.ann_index import HnswParameters, IndexParameters, ann_top_k_rows, open_index, save_index
from crossan.export.content import ITEM_ENCODER_FILE, ContentEncoder
from crossan.export.errors import ExportFileError, NonFiniteScoreError
from crossan.export.item_table import TABLE_FILE, load_item_table, save_item_table
from crossan.export.ranking import history_window, non_finite_rows, top_k_rows
from crossan.export.reading import REEXPORT, check_records, describe, missing_folder_error, open_session, read_records
from crossan.export.variants import FLOAT32, check_variant, require_variant, variant_file, variant_providers

__all__ = ["UnknownItemError", "OnnxRecommender"]

USER_ENCODER_FILE = "user_encoder.onnx"
INDEX_KINDS = ("exact", "faiss")
LIST_TYPES = (list, tuple)


class UnknownItemError(ValueError):
    """A history names item ids that the exported item table does not contain."""

    def __init__(self, unknown: list[str], num_items: int) -> None:
        shown = ", ".join(unknown[:10]) + (f" and {len(unknown) - 10} more" if len(unknown) > 10 else "")
        super().__init__(
            f"{len(unknown)} unknown item id(s): {shown} (the item table has {num_items} items; "
            f"embed new items with item_encoder.onnx and re-export the table)"
        )
        self.unknown = unknown


def _check_k(k: object) -> None:
    """`k` must be a positive int (or NumPy integer); a bool is refused, though Python counts it as one."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"k must be a positive int, got {k!r} ({type(k).__name__})")
    if k < 1:
        raise ValueError(f"k must be a positive int, got {k}")


def _session_options(threads: object) -> ort.SessionOptions | None:
    """The sessions' options for `threads`: None (onnxruntime's defaults) when it is None, else
    `threads` intra-op threads and one inter-op thread. `threads` must be a positive int (a bool is refused)."""
    if threads is None:
        return None
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)):
        raise TypeError(f"threads must be a positive int or None, got {threads!r} ({type(threads).__name__})")
    if threads < 1:
        raise ValueError(f"threads must be a positive int or None, got {threads}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = 1
    return options


def _check_item_ids(item_ids: object, what: str) -> None:
    """`item_ids` must be a list or tuple of str, the type of the catalogue's ids: an int or a
    NumPy array would otherwise be looked up as an unknown id, or compared element-wise."""
    if not isinstance(item_ids, LIST_TYPES):
        raise TypeError(f"{what} must be a list of item ids (str), got {type(item_ids).__name__}")
    wrong = next((i for i, item in enumerate(item_ids) if not isinstance(item, str)), None)
    if wrong is not None:
        item = item_ids[wrong]
        raise TypeError(f"{what}: item ids are str, got {item!r} ({type(item).__name__}) at position {wrong}")


def _check_histories(histories: object) -> None:
    """`histories` must be a list or tuple of histories, each a list or tuple of item ids (str)."""
    if not isinstance(histories, LIST_TYPES):
        raise TypeError(
            f"histories must be a list of histories (lists of item ids, str), got {type(histories).__name__}"
        )
    for i, history in enumerate(histories):
        _check_item_ids(history, f"history {i}")


def _check_content(content: object) -> None:
    """`content` must map modality names to lists of sources: titles (str) or media paths."""
    if not isinstance(content, Mapping):
        raise TypeError(f"content must map each modality to a list of sources, got {type(content).__name__}")
    for modality, sources in content.items():
        if not isinstance(sources, LIST_TYPES):
            raise TypeError(
                f"content[{modality!r}] must be a list of sources (a title or a path per item), "
                f"got {type(sources).__name__}"
            )
        wrong = next((s for s in sources if not isinstance(s, (str, os.PathLike))), None)
        if wrong is not None:
            raise TypeError(f"content[{modality!r}]: sources are str or paths, got {wrong!r} ({type(wrong).__name__})")


class OnnxRecommender:
    """Top-k item ids for users given by their item-id histories.

    Loads `user_encoder.onnx` and `item_embeddings.safetensors` from an export folder. A
    user's last `max_len` items (the limit the encoder was exported with) form the user
    vector; items are ranked by dot product with it; items in the history are excluded.

    `add_items` embeds new items from their raw content (titles, cover images, videos) with the
    exported backbones (`python -m crossan.export --with-backbones`) and adds them to the ranking.

    Sessions run on CUDA where onnxruntime-gpu and a GPU are present, else on the CPU
    (`crossan.export.providers`); `providers` says which ran.

    Every file is checked as it is read (`crossan.export.reading`): a missing, empty, truncated
    or foreign file, one changed since the export recorded its size and hash, an item table
    that disagrees with the user encoder or holds NaN: each is one error naming the file.
    Requests are checked too: ids are str, histories lists of them, `k` a positive int.

    `index="exact"` (the default) scores every catalogue item. `index="faiss"` searches a FAISS
    index instead (`index_parameters`: `crossan.export.ann_index.HnswParameters()` by default, or
    `IvfParameters`), built on first use and saved beside the table: approximate, but its cost
    does not grow with the catalogue the way a full scan does.

    `variant="opt"` or `"int8"` serves the export's optimised or int8 graphs (`user_encoder.int8.onnx`,
    and in `add_items` `item_encoder.int8.onnx` and `<modality>_backbone.int8.onnx`), written by
    `python -m crossan.export --optimize` / `--quantize int8`, on the CPU provider
    (`crossan.export.variants`); the item table is the float32 export's.

    `threads=N` bounds each onnxruntime session (the user encoder, and those `add_items` opens) to
    N intra-op threads and one inter-op thread, and, with `index="faiss"`, FAISS's OpenMP threads
    (`faiss.omp_set_num_threads`, which is process-wide) for building, searching and adding to the
    index. Results stay the same up to float32 rounding (some onnxruntime kernels split their sums by
    thread). None (the default) leaves each library its own default (onnxruntime: one thread per
    core). The exact index's NumPy scan follows OMP_NUM_THREADS.
    """

    def __init__(
        self,
        export_dir: str | Path,
        providers: Sequence[str] | None = None,
        index: Literal["exact", "faiss"] = "exact",
        index_parameters: IndexParameters | None = None,
        variant: str = FLOAT32,
        threads: int | None = None,
    ) -> None:
        self._session_options = _session_options(threads)
        self.threads: int | None = None if threads is None else int(threads)
        if index not in INDEX_KINDS:
            raise ValueError(f"index must be one of {', '.join(map(repr, INDEX_KINDS))}, got {index!r}")
        if index_parameters is not None and index != "faiss":
            raise ValueError(f"index_parameters apply to index='faiss' only, got index={index!r}")
        export_dir = Path(export_dir)
        if not export_dir.is_dir():
            raise missing_folder_error(export_dir)
        self.export_dir = export_dir
        self.variant = check_variant(variant)
        self._requested_providers = variant_providers(variant, providers)
        self._content: ContentEncoder | None = None
        self.user_file = variant_file(USER_ENCODER_FILE, variant)
        check_records(export_dir, read_records(export_dir), [self.user_file])
        self.session, self.spec = open_session(
            require_variant(export_dir / self.user_file, variant),
            self._requested_providers,
            "user_encoder",
            self._session_options,
        )
        max_len = self.spec.max_sizes.get("length")
        if not isinstance(max_len, int) or max_len < 1:
            raise ExportFileError(f"{export_dir / self.user_file}: its spec bounds no history length; {REEXPORT}")
        self.max_len: int = max_len
        self.item_table, self.item_ids = load_item_table(export_dir / TABLE_FILE)
        self._check_width()
        self._index = {item: i + 1 for i, item in enumerate(self.item_ids)}
        self.index_parameters = index_parameters or HnswParameters()
        if index == "faiss":
            self._bound_faiss_threads()
        self.ann_index = (
            open_index(export_dir / TABLE_FILE, self.item_table, self.index_parameters) if index == "faiss" else None
        )

    def _bound_faiss_threads(self) -> None:
        """Set FAISS's (process-wide) OpenMP threads to `threads`, before each use of the index: another
        recommender in the process may have set another count. Nothing without `threads`."""
        if self.threads is not None:
            faiss.omp_set_num_threads(self.threads)

    def _check_width(self) -> None:
        """The table's embeddings must be as wide as the user encoder's input: two files of
        different exports (or models) must not be ranked together."""
        width = self.session.get_inputs()[0].shape[-1]
        if isinstance(width, int) and width != self.item_table.shape[1]:
            raise ExportFileError(
                f"{self.export_dir / TABLE_FILE}: embeddings are {self.item_table.shape[1]} wide, "
                f"{self.user_file} takes {width}: the files come from different exports; "
                f"{REEXPORT}"
            )

    @property
    def providers(self) -> list[str]:
        """The execution provider each loaded session runs on, deduplicated (e.g. `["CPUExecutionProvider"]`)."""
        used = {self.session.get_providers()[0]}
        if self._content is not None:
            used.update(self._content.providers)
        return sorted(used)

    def add_items(
        self, item_ids: Sequence[str], content: Mapping[str, Sequence[str | Path]], save: bool = False
    ) -> np.ndarray:
        """Embed new items from their raw content and add them to the ranking; returns their
        embeddings `[len(item_ids), D]`.

        `content` maps each modality of the model to one source per item: `text` the titles,
        `image` cover image paths, `video` and `audio` video files (the soundtrack is read from
        the video, as in training). `save=True` also rewrites `item_embeddings.safetensors` (and
        the FAISS index beside it) so the items stay after a restart.
        """
        _check_item_ids(item_ids, "item_ids")
        _check_content(content)
        if save and self.variant != FLOAT32:
            raise ValueError(
                f"save=True writes the export's float32 item table, and these items would be embedded by the "
                f"{self.variant} graphs; save new items from OnnxRecommender(..., variant={FLOAT32!r})"
            )
        item_ids = list(item_ids)
        if not item_ids:
            raise ValueError("no items to add")
        repeated = sorted(item for item, count in Counter(item_ids).items() if count > 1)
        known = sorted(item for item in set(item_ids) if item in self._index)
        if repeated or known:
            raise ValueError(
                "item ids must be new and distinct: "
                + (
                    f"repeated {', '.join(repeated[:10])}"
                    if repeated
                    else f"already in the table: {', '.join(known[:10])}"
                )
            )
        if self._content is None:
            self._content = ContentEncoder(
                self.export_dir, self._requested_providers, self.variant, self._session_options
            )
        lengths = {m: len(sources) for m, sources in content.items()}
        if any(n != len(item_ids) for n in lengths.values()):
            raise ValueError(f"{len(item_ids)} item ids, but content sources per modality {lengths}")
        embeddings = self._content.embed(content)
        self._check_new_embeddings(item_ids, embeddings)
        first_row = len(self.item_ids)
        self.item_table = np.concatenate([self.item_table, embeddings])
        self.item_ids = [*self.item_ids, *item_ids]
        self._index.update({item: first_row + i + 1 for i, item in enumerate(item_ids)})
        if self.ann_index is not None:
            self._bound_faiss_threads()
            self.ann_index.add(np.ascontiguousarray(embeddings, dtype=np.float32))
        if save:
            table_path = save_item_table(
                self.export_dir / TABLE_FILE,
                self.item_table,
                self.item_ids,
                source=f"{TABLE_FILE} with {len(item_ids)} item(s) added from raw content",
            )
            if self.ann_index is not None:
                save_index(table_path, self.item_table, self.ann_index, self.index_parameters)
        return embeddings

    def _check_new_embeddings(self, item_ids: list[str], embeddings: np.ndarray) -> None:
        """New items join the table only with embeddings of its width and finite values."""
        if embeddings.ndim != 2 or embeddings.shape[1] != self.item_table.shape[1]:
            raise ExportFileError(
                f"{self.export_dir / variant_file(ITEM_ENCODER_FILE, self.variant)}: gives embeddings of shape "
                f"{list(embeddings.shape)}, the table's are {self.item_table.shape[1]} wide: the "
                f"files come from different exports; {REEXPORT}"
            )
        bad = non_finite_rows(embeddings)
        if len(bad):
            raise NonFiniteScoreError(
                f"{variant_file(ITEM_ENCODER_FILE, self.variant)} gives NaN or infinite embeddings for new item(s) "
                f"{describe([item_ids[row] for row in bad])}; none was added"
            )

    def __contains__(self, item_id: object) -> bool:
        """Whether `item_id` is in the item table (and so may appear in a history)."""
        return item_id in self._index

    def recommend(self, histories: Sequence[Sequence[str]], k: int = 10) -> list[list[str]]:
        """For each history (item ids, oldest first), the `k` best item ids not in it, best first.

        Raises `TypeError` unless `histories` is a list of lists of str and `k` an int,
        `ValueError` for `k` < 1 or an empty history, `UnknownItemError` for ids not in the
        table, and `NonFiniteScoreError` when the user encoder gives NaN or inf (or scores overflow)."""
        _, ranked = self._rank(histories, k)
        return [[self.item_ids[row] for row in user_rows] for user_rows in ranked]

    def recommend_scored(self, histories: Sequence[Sequence[str]], k: int = 10) -> list[list[tuple[str, float]]]:
        """`recommend`'s lists (same checks, same errors) with each item's score: `(item id, score)`, best first.

        The score is the float32 dot product of the user and item embeddings, which both indexes
        rank by. It is computed again for the returned items, so the exact scan and FAISS (whose
        own distances come from other arithmetic) report the same number for the same pair; that
        number may differ from the ranking's own in the last bit, so two nearly tied items can
        show their scores one float32 step out of order."""
        user_vectors, ranked = self._rank(histories, k)
        return [
            list(zip([self.item_ids[row] for row in rows], (self.item_table[rows] @ vector).tolist(), strict=True))
            for vector, rows in zip(user_vectors, ranked, strict=True)
        ]

    def _rank(self, histories: Sequence[Sequence[str]], k: int) -> tuple[np.ndarray, list[np.ndarray]]:
        """The checks and the ranking behind `recommend`: the user embeddings `[B, D]` float32 and, per
        user, the catalogue rows of the `k` best items not in the history, best first."""
        _check_k(k)
        _check_histories(histories)
        unknown = sorted({item for history in histories for item in history if item not in self._index})
        if unknown:
            raise UnknownItemError(unknown, len(self.item_ids))
        empty = [i for i, history in enumerate(histories) if not history]
        if empty:
            raise ValueError(f"histories {describe(empty)} are empty; a user needs at least one item")
        if not histories:
            return np.zeros((0, self.item_table.shape[1]), dtype=np.float32), []
        indices = [np.array([self._index[item] for item in history], dtype=np.int64) for history in histories]
        rows, padding_mask = history_window(indices, self.max_len)
        embeddings_name, mask_name = self.spec.input_names
        (user_vectors,) = self.session.run(
            list(self.spec.output_names), {embeddings_name: self.item_table[rows], mask_name: padding_mask}
        )
        bad = non_finite_rows(user_vectors)
        if len(bad):
            raise NonFiniteScoreError(
                f"{self.export_dir / self.user_file} gives NaN or infinite user embeddings "
                f"for histories {describe(bad.tolist())} (positions in the request); "
                f"nothing was ranked"
            )
        if self.ann_index is None:
            ranked = top_k_rows(user_vectors, self.item_table, indices, k, self.item_ids)
        else:
            self._bound_faiss_threads()
            ranked = ann_top_k_rows(self.ann_index, user_vectors, self.item_table, indices, k, self.item_ids)
        return np.asarray(user_vectors, dtype=np.float32), ranked
