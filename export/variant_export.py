"""Write an export's optimised and int8 graphs (`--optimize`, `--quantize int8`) and check them against float32.

For every graph of the export (the item and user encoders, and each backbone with `--with-backbones`):

- `--optimize` writes `<graph>.opt.onnx`. The text and image backbones go through onnxruntime's
  transformer optimiser (model type "bert" and "vit"); every other graph through onnxruntime's
  offline graph optimisation at the extended level on the CPU provider. Both files hold fused
  operators of onnxruntime's CPU kernels, so they are served on the CPU only. The graphs of the
  torch.export-based exporter match few of the transformer optimiser's patterns (attention is not
  fused), so the report records which fusions it made, not what it promises.
- `--quantize int8` writes `<graph>.int8.onnx`: `quant_pre_process` (symbolic shape inference),
  then `quantize_dynamic`: int8 weights, activations quantised to uint8 at run time. The encoders'
  weights take 7 bits and one scale per tensor (`REDUCE_RANGE`, `PER_CHANNEL`), the backbones'
  8 bits and one scale per output channel (`BACKBONE_REDUCE_RANGE`, `BACKBONE_PER_CHANNEL`). The report
  counts the operators quantised (matmuls and `Gemm`s with a constant weight, gathers from
  embedding tables) and the float32 matmuls left: those of two activations (as in attention) and
  a mixture of experts' gate, whose top-k choice int8 noise would flip.

`check_variants` runs every variant file next to its float32 graph in onnxruntime (CPU) on the
inputs the float32 checks used (the encoders' validation cases; the backbones' raw content of
real catalogue items), and fails the export with `ValueMismatchError` when a file's largest error,
relative to the largest magnitude of the float32 output, exceeds its variant's tolerance
(`OPTIMIZED_TOLERANCE`, `INT8_TOLERANCE`). It then serves the catalogue through the variant (every
item embedded by its item encoder, the re-embedded items through its backbones, users through its
user encoder) and records how many test users get float32's top-k list and the mean overlap of the
lists; rankings are measured, not required to match, since int8 moves near-tied items by design.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnxruntime.quantization import QuantType, quantize_dynamic
from onnxruntime.quantization.shape_inference import quant_pre_process
from onnxruntime.transformers.optimizer import optimize_model

from crossan.export.content import ContentEncoder
from crossan.export.errors import ExportValidationError, NameMismatchError, ValueMismatchError
from crossan.export.providers import CPU
from crossan.export.reading import file_record, one_line
from crossan.export.spec import SPEC_METADATA_KEY, ExportSpec
from crossan.export.validation import Case, OnnxEncoder, catalogue_embeddings, check_finite, recommend
from crossan.export.variants import FLOAT32, INT8, OPTIMIZED, VARIANT_OPTIONS, variant_file

__all__ = [
    "OPTIMIZED_TOLERANCE",
    "INT8_TOLERANCE",
    "PER_CHANNEL",
    "REDUCE_RANGE",
    "BACKBONE_PER_CHANNEL",
    "BACKBONE_REDUCE_RANGE",
    "TRANSFORMER_MODEL_TYPES",
    "WrittenVariant",
    "FileCheck",
    "RankingCheck",
    "compare_rankings",
    "VariantResult",
    "FloatServing",
    "variant_tolerance",
    "write_variants",
    "check_variants",
]

OPTIMIZED_TOLERANCE = 1e-5
"""Largest error of an optimised graph, relative to the float32 output's largest magnitude: fused
kernels only reorder float32 sums (measured at most 9e-7: BERT-base and ViT-base through the
transformer optimiser; 0 for the offline-optimised encoders)."""
INT8_TOLERANCE = 0.15
"""Largest error of an int8 graph, relative to the float32 output's largest magnitude: 7-bit weights
and 8-bit activations keep about two significant digits, and errors grow through the layers
(measured: 2.4% on BERT-base, 3.2% on ViT-base, 5.3% on the pretrained MiniLM over real titles,
1.4% to 7.2% on toy runs' encoders and tiny backbones); about twice that still stops a broken
graph, such as a gate whose top-k choice int8 flips (36%)."""
PER_CHANNEL = False
"""The item and user encoders' weights with one int8 scale per tensor: onnxruntime 1.31 refuses to
run the per-channel matmuls of the item encoder's adapters (invalid zero point)."""
REDUCE_RANGE = True
"""The item and user encoders' weights in 7 bits: x86 CPUs without VNNI (AVX2) multiply uint8
activations by int8 weights with instructions whose pairwise sums saturate at 16 bits, and the
toy item encoder's adapters did (error 15% with 8-bit weights, 1.8% with 7-bit ones)."""
BACKBONE_PER_CHANNEL = True
"""The backbones' weights with one int8 scale per output channel: a pretrained transformer's weight
columns differ in range, and one scale per tensor spends the few levels of the small ones. On the
pretrained MiniLM over 512 Amazon Scientific titles, per channel cut the largest error from 0.117
to 0.051 of the output's scale and the mean relative L2 error of the states from 23% to 8%."""
BACKBONE_REDUCE_RANGE = False
"""The backbones' weights in 8 bits: their errors were smaller so (BERT-base 3.2% against 5.3%
with 7 bits; the pretrained MiniLM 10.4% against 18%, which failed the tolerance)."""
TRANSFORMER_MODEL_TYPES = {"text": "bert", "image": "vit"}
"""Backbones that go through onnxruntime's transformer optimiser, with its model type."""
INTEGER_OPS = {
    "MatMulInteger": "MatMul",
    "DynamicQuantizeMatMul": "MatMul",
    "ConvInteger": "Conv",
    "QAttention": "Attention",
    "DynamicQuantizeLSTM": "LSTM",
    "QEmbedLayerNormalization": "EmbedLayerNormalization",
}
"""The operators dynamic quantisation writes, by the float32 operator each replaces."""
FLOAT_WEIGHT_OPS = ("MatMul", "Gemm", "Conv")
SELECTION_OPS = ("TopK", "ArgMax", "ArgMin")
"""Operators that make a discrete choice from scores (a mixture of experts' gate picking its top k)."""
INT8_TYPES = (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)


def variant_tolerance(variant: str) -> float:
    """The tolerance of `variant` (read when called, so that a test may lower it)."""
    return {OPTIMIZED: OPTIMIZED_TOLERANCE, INT8: INT8_TOLERANCE}[variant]


@dataclass(frozen=True)
class WrittenVariant:
    """One variant file written beside its float32 graph, how, and what the writer changed."""

    variant: str
    spec: ExportSpec
    method: str
    statistics: dict[str, Any]

    @property
    def file(self) -> str:
        return variant_file(self.spec.onnx_file, self.variant)


@contextmanager
def _quiet_tools() -> Iterator[None]:
    """Silence onnxruntime's Python tools, which log every shape they cannot infer symbolically
    (a graph's length axis bounded by the spec, say) as a warning."""
    logger = logging.getLogger("onnxruntime")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _contrib_ops(model: onnx.ModelProto) -> dict[str, int]:
    """How many nodes of each onnxruntime-specific (fused) operator `model` holds."""
    return dict(sorted(Counter(n.op_type for n in model.graph.node if n.domain == "com.microsoft").items()))


def _optimize_offline(source: Path, target: Path) -> dict[str, Any]:
    """onnxruntime's extended graph optimisation on the CPU provider, saved to `target`."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(target)
    options.log_severity_level = 3  # its notes on nodes placed on the CPU are expected here
    ort.InferenceSession(str(source), options, providers=[CPU])
    before, after = onnx.load(str(source)), onnx.load(str(target))
    return {"nodes": [len(before.graph.node), len(after.graph.node)], "fused": _contrib_ops(after)}


def _optimize_transformer(source: Path, target: Path, model_type: str) -> dict[str, Any]:
    """onnxruntime's transformer optimiser (heads and width read from the graph), saved to `target`."""
    with _quiet_tools():
        optimizer = optimize_model(str(source), model_type=model_type)
    fused = {name: int(count) for name, count in optimizer.get_fused_operator_statistics().items()}
    optimizer.save_model_to_file(str(target))
    return {"nodes": [len(onnx.load(str(source)).graph.node), len(optimizer.model.graph.node)], "fused": fused}


def _selection_weights(model: onnx.ModelProto) -> list[str]:
    """The weight operators nearest upstream of a selection (`SELECTION_OPS`): a gate's scores. They
    stay float32: int8 noise on near-tied scores flips the choice, and a flipped expert moves the
    output by a sizeable share of its scale (measured: 36% on 1% of a toy run's items, against 1.4%
    at most with the gate in float32)."""
    producers = {output: node for node in model.graph.node for output in node.output}
    weights = {t.name for t in model.graph.initializer}
    found, seen = set(), set()
    pending = [node.input[0] for node in model.graph.node if node.op_type in SELECTION_OPS]
    while pending:
        name = pending.pop()
        node = producers.get(name)
        if node is None or name in seen:
            continue
        seen.add(name)
        if node.op_type in FLOAT_WEIGHT_OPS and any(i in weights for i in node.input):
            found.add(node.name)
        else:
            pending += node.input
    return sorted(found)


def _quantized_ops(model: onnx.ModelProto) -> dict[str, dict[str, int]]:
    """The float32 operators `model` quantised (gathers from an int8 table among them), and the
    weight operators it left in float32."""
    int8_tables = {t.name for t in model.graph.initializer if t.data_type in INT8_TYPES}
    nodes = model.graph.node
    quantized = Counter(INTEGER_OPS[n.op_type] for n in nodes if n.op_type in INTEGER_OPS)
    quantized.update("Gather" for n in nodes if n.op_type == "Gather" and n.input[0] in int8_tables)
    left = Counter(n.op_type for n in nodes if n.op_type in FLOAT_WEIGHT_OPS)
    return {"quantized": dict(sorted(quantized.items())), "float32_left": dict(sorted(left.items()))}


def _quantize(source: Path, target: Path, per_channel: bool, reduce_range: bool) -> dict[str, Any]:
    """`quant_pre_process`, then int8 `quantize_dynamic` but for the gates (`_selection_weights`),
    into `target` (the pre-processed graph lives in a hidden file beside it, which nothing serves,
    until the end)."""
    prepared = target.with_name(f".{target.name}.prepared")
    try:
        with _quiet_tools():
            # auto_merge: the text backbone's token axis is bounded by a Min() that symbolic shape
            # inference cannot otherwise broadcast against the axis itself. skip_optimization: the
            # pre-processing's own optimisation turned the paper-size crossan-tiva item encoder into
            # a graph whose shapes the quantiser's shape inference rejects; onnxruntime optimises the
            # int8 graph when it loads it (BERT-base measured the same nodes and errors either way).
            shape_inference = _pre_process(source, prepared)
            gates = _selection_weights(onnx.load(str(prepared)))
            quantize_dynamic(
                str(prepared),
                str(target),
                weight_type=QuantType.QInt8,
                per_channel=per_channel,
                reduce_range=reduce_range,
                # The quantiser renames a Gemm to `<name>_MatMul` before it looks up exclusions.
                nodes_to_exclude=[*gates, *(f"{name}_MatMul" for name in gates)],
            )
    except Exception as error:  # onnxruntime's tools raise bare Exceptions (an incomplete shape inference)
        raise ExportValidationError(f"{source.name}: int8 quantisation failed ({one_line(error)})") from error
    finally:
        prepared.unlink(missing_ok=True)
    return {**_quantized_ops(onnx.load(str(target))), "float32_gates": gates, "shape_inference": shape_inference}


def _pre_process(source: Path, prepared: Path) -> str:
    """`quant_pre_process` of `source` into `prepared`; returns which shape inference it used.

    ONNX Runtime's symbolic shape inference first (it resolves the transformers' dynamic axes);
    where it cannot follow a graph (it fails on the Expand of the frozen prior's pooled history in
    `crossan-t`'s item encoder), ONNX's own shape inference, which knows the constant weights the
    dynamic quantiser needs, run on the graph without the intermediate shapes the exporter
    recorded (some of which it specialised to the example's sizes, which ONNX's inference then
    contradicts). The variant's record says which, and either graph must pass the int8
    tolerance check like any other."""
    try:
        quant_pre_process(str(source), str(prepared), auto_merge=True, skip_optimization=True)
        return "symbolic"
    except Exception:  # noqa: BLE001  # onnxruntime's shape tools raise bare Exceptions
        unshaped = prepared.with_name(f"{prepared.name}.unshaped")
        model = onnx.load(str(source))
        del model.graph.value_info[:]
        onnx.save(model, str(unshaped))
        try:
            quant_pre_process(str(unshaped), str(prepared), skip_optimization=True, skip_symbolic_shape=True)
        finally:
            unshaped.unlink(missing_ok=True)
        return "onnx"


def _modality(spec: ExportSpec) -> str | None:
    """The backbone's modality, or None for the item and user encoders."""
    return spec.name.removesuffix("_backbone") if spec.name.endswith("_backbone") else None


def write_variants(
    out_dir: Path, specs: Sequence[ExportSpec], optimize: bool, quantize: str | None
) -> list[WrittenVariant]:
    """Write the variant files of every graph in `specs` into `out_dir`, beside their float32 files."""
    if quantize not in (None, INT8):
        raise ValueError(f"quantize must be None or {INT8!r}, got {quantize!r}")
    written = []
    for spec in specs:
        source = out_dir / spec.onnx_file
        if optimize:
            target = out_dir / variant_file(spec.onnx_file, OPTIMIZED)
            model_type = TRANSFORMER_MODEL_TYPES.get(_modality(spec) or "")
            if model_type is None:
                method = "onnxruntime extended graph optimisation, CPU provider"
                statistics = _optimize_offline(source, target)
            else:
                method = f"onnxruntime.transformers optimize_model, model type {model_type}"
                statistics = _optimize_transformer(source, target, model_type)
            written.append(WrittenVariant(OPTIMIZED, spec, method, statistics))
        if quantize == INT8:
            target = out_dir / variant_file(spec.onnx_file, INT8)
            backbone = _modality(spec) is not None
            per_channel = BACKBONE_PER_CHANNEL if backbone else PER_CHANNEL
            reduce_range = BACKBONE_REDUCE_RANGE if backbone else REDUCE_RANGE
            method = (
                f"quant_pre_process + quantize_dynamic, QInt8 weights, per_channel={per_channel}, "
                f"reduce_range={reduce_range}"
            )
            statistics = _quantize(source, target, per_channel, reduce_range)
            written.append(WrittenVariant(INT8, spec, method, statistics))
    return written


@dataclass
class FileCheck:
    """One variant file against its float32 graph on the same inputs."""

    written: WrittenVariant
    inputs: str
    max_abs_error: float
    output_scale: float
    record: dict[str, Any] = field(default_factory=dict)
    float32_bytes: int = 0

    @property
    def relative_error(self) -> float:
        """`max_abs_error` over the float32 output's largest magnitude (0 when both are 0)."""
        if self.output_scale > 0:
            return self.max_abs_error / self.output_scale
        return 0.0 if self.max_abs_error == 0 else float("inf")

    @property
    def tolerance(self) -> float:
        return variant_tolerance(self.written.variant)

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.written.file,
            "graph": self.written.spec.name,
            "variant": self.written.variant,
            "method": self.written.method,
            **self.written.statistics,
            "bytes": self.record["bytes"],
            "sha256": self.record["sha256"],
            "float32_bytes": self.float32_bytes,
            "inputs": self.inputs,
            "max_abs_error": self.max_abs_error,
            "output_scale": self.output_scale,
            "relative_error": self.relative_error,
            "tolerance": self.tolerance,
        }


@dataclass(frozen=True)
class RankingCheck:
    """A variant's top-k lists against float32's for every test user: how many are identical, and
    the mean share of float32's k items each keeps."""

    k: int
    num_users: int
    identical: int
    mean_overlap: float

    @property
    def fraction(self) -> float:
        return self.identical / self.num_users if self.num_users else 1.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "k": self.k,
            "num_users": self.num_users,
            "identical": self.identical,
            "fraction": self.fraction,
            "mean_overlap": self.mean_overlap,
        }


def compare_rankings(reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray], k: int) -> RankingCheck:
    """`candidate`'s top-k lists against `reference`'s, user by user."""
    pairs = list(zip(reference, candidate, strict=True))
    identical = sum(np.array_equal(a, b) for a, b in pairs)
    shared = [len(np.intersect1d(a, b)) / max(len(a), 1) for a, b in pairs]
    return RankingCheck(k, len(pairs), int(identical), float(np.mean(shared)) if shared else 1.0)


@dataclass
class VariantResult:
    """Every file of one variant, checked, and its rankings against float32's: `ranking` with every
    catalogue item embedded by the variant (the re-embedded items through its backbones), `user_ranking`
    with the variant's user encoder over float32's table, as `OnnxRecommender(variant=...)` ranks
    the exported catalogue."""

    variant: str
    files: list[FileCheck]
    ranking: RankingCheck
    user_ranking: RankingCheck
    reembedded_items: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "option": VARIANT_OPTIONS[self.variant],
            "tolerance": variant_tolerance(self.variant),
            "error_measure": "max abs error / max |float32 output| on the same inputs, onnxruntime CPU",
            "files": [f.to_dict() for f in self.files],
            "top_k_agreement": {**self.ranking.to_dict(), "reembedded_items": self.reembedded_items},
            "top_k_agreement_float32_table": self.user_ranking.to_dict(),
        }


@dataclass(frozen=True)
class FloatServing:
    """The float32 export's inputs and served ranking, which every variant is compared with."""

    item_cases: Sequence[Case]
    user_cases: Sequence[Case]
    gather: Callable[[torch.Tensor], tuple[torch.Tensor, ...]]
    num_items: int
    histories: Sequence[np.ndarray]
    max_len: int
    k: int
    catalogue: np.ndarray
    """float32's item table: every catalogue item's cached states through `item_encoder.onnx`."""
    table: np.ndarray
    """`catalogue` with the re-embedded items' rows from raw content (with backbones)."""
    top: Sequence[np.ndarray]
    """float32's top-k rows per history over `table`."""
    content_rows: list[int] = field(default_factory=list)
    content_sources: Mapping[str, list[str]] = field(default_factory=dict)
    """Per modality, the titles or media paths of `content_rows` (with backbones)."""


def _compare(variant: np.ndarray, reference: np.ndarray, where: str, name: str) -> tuple[float, float]:
    """(max abs error, largest float32 magnitude) of one output; NaN or inf raises."""
    check_finite(variant, where, name, "rows")
    error = float(np.abs(variant.astype(np.float64) - reference.astype(np.float64)).max(initial=0.0))
    return error, float(np.abs(reference).max(initial=0.0))


def _check_spec_carried(session: ort.InferenceSession, spec: ExportSpec, path: Path) -> None:
    """The variant must carry its float32 graph's spec (names, axes, limits) for serving to read."""
    carried = session.get_modelmeta().custom_metadata_map.get(SPEC_METADATA_KEY)
    if carried is None or ExportSpec.from_json(carried) != spec:
        raise NameMismatchError(f"{path.name}: does not carry the export spec of {spec.onnx_file}")


def _check_encoder(out_dir: Path, written: WrittenVariant, cases: Sequence[Case]) -> tuple[FileCheck, OnnxEncoder]:
    """An item or user encoder variant against its float32 graph at every validation case."""
    spec = written.spec
    path = out_dir / written.file
    candidate, reference = OnnxEncoder(path, spec, CPU), OnnxEncoder(out_dir / spec.onnx_file, spec, CPU)
    _check_spec_carried(candidate.session, spec, path)
    candidate.check_signature()
    error = scale = 0.0
    for label, inputs in cases:
        for name, got, want in zip(spec.output_names, candidate(*inputs), reference(*inputs), strict=True):
            case_error, case_scale = _compare(got, want, f"{written.file} at {label}", name)
            error, scale = max(error, case_error), max(scale, case_scale)
    return FileCheck(written, f"{len(cases)} validation cases", error, scale), candidate


def _require_tolerance(check: FileCheck) -> None:
    if not check.relative_error <= check.tolerance:
        raise ValueMismatchError(
            f"{check.written.file}: max abs error {check.max_abs_error:.3g} against {check.written.spec.onnx_file} "
            f"is {check.relative_error:.3g} of its output's scale {check.output_scale:.3g}, over the "
            f"{check.written.variant} tolerance {check.tolerance:g} (on {check.inputs})"
        )


def _check_variant(
    out_dir: Path,
    variant: str,
    written: list[WrittenVariant],
    serving: FloatServing,
    float32_states: Mapping[str, tuple[list[Any], np.ndarray]],
) -> VariantResult:
    """Every file of `variant` against float32 (the first to miss its tolerance raises), then its
    rankings; `float32_states` holds per modality the re-embedded items' read contents and float32 states."""
    by_graph = {w.spec.name: w for w in written}
    item_check, item_encoder = _check_encoder(out_dir, by_graph["item_encoder"], serving.item_cases)
    table = catalogue_embeddings(item_encoder, serving.gather, serving.num_items)
    error, scale = _compare(table, serving.catalogue, item_check.written.file, item_encoder.spec.output_names[0])
    item_check.max_abs_error = max(item_check.max_abs_error, error)
    item_check.output_scale = max(item_check.output_scale, scale)
    item_check.inputs += f" and the {serving.num_items} catalogue items"
    user_check, user_encoder = _check_encoder(out_dir, by_graph["user_encoder"], serving.user_cases)
    checks = [item_check, user_check]
    for check in checks:
        _require_tolerance(check)
    if serving.content_rows:
        content = ContentEncoder(out_dir, [CPU], variant)
        states = {}
        for modality in content.modalities:
            written_backbone = by_graph[f"{modality}_backbone"]
            path = out_dir / written_backbone.file
            _check_spec_carried(content.backbones[modality], written_backbone.spec, path)
            contents, reference = float32_states[modality]
            states[modality] = content.states(modality, contents)
            error, scale = _compare(states[modality], reference, written_backbone.file, f"states_{modality}")
            check = FileCheck(
                written_backbone, f"{len(serving.content_rows)} catalogue items from raw content", error, scale
            )
            _require_tolerance(check)
            checks.append(check)
        table[serving.content_rows] = content.embed_states(states, serving.content_rows)
    for check in checks:
        check.record = file_record(out_dir / check.written.file)
        check.float32_bytes = (out_dir / check.written.spec.onnx_file).stat().st_size
    ranking, user_ranking = (
        compare_rankings(
            serving.top, recommend(user_encoder, items, serving.histories, serving.max_len, serving.k), serving.k
        )
        for items in (table, serving.table)
    )
    return VariantResult(variant, checks, ranking, user_ranking, len(serving.content_rows))


def check_variants(out_dir: Path, written: list[WrittenVariant], serving: FloatServing) -> list[VariantResult]:
    """Check every written variant against the float32 export (`ValueMismatchError` past a tolerance)."""
    float32_states: dict[str, tuple[list[Any], np.ndarray]] = {}
    if serving.content_rows:
        content = ContentEncoder(out_dir, [CPU], FLOAT32)
        for modality in content.modalities:
            contents = content.read(modality, serving.content_sources[modality])
            float32_states[modality] = (contents, content.states(modality, contents))
    variants = [v for v in (OPTIMIZED, INT8) if any(w.variant == v for w in written)]
    return [
        _check_variant(out_dir, v, [w for w in written if w.variant == v], serving, float32_states) for v in variants
    ]
