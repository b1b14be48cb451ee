"""Export a model's item and user encoders (ONNX and TorchScript) and validate them.

`export_model` and `validate_grid` work on any model; `export_run` does the whole job for a
training run: export, validation on real cached item states, the item-embedding table from
the exported item encoder, and top-k agreement with PyTorch for every test user. With
`with_backbones`, it also exports the frozen backbones and their preprocessing
(`crossan.export.backbones`) and checks the torch-free path from raw content on real items.
With `optimize` and `quantize="int8"` it also writes the graphs' optimised and int8 variants and
checks them against the float32 graphs (`crossan.export.variant_export`). It writes beside the
output folder and swaps the result in only once everything passed (`crossan.export.publishing`),
so a failed export leaves the folder as it was.
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from rich.console import Console
from rich.table import Table

from crossan.export.ann_index import INDEX_FILE, SIDECAR_FILE
from crossan.export.backbones import BackboneCheck, export_backbones, item_sources, validate_backbones
from crossan.export.content import ContentEncoder
from crossan.export.item_table import TABLE_FILE, save_item_table
from crossan.export.onnx_export import export_onnx
from crossan.export.providers import CPU, exact_float32, execution_providers
from crossan.export.publishing import check_replaceable, staged_export
from crossan.export.ranking import history_window
from crossan.export.reading import RECORDS_KEY, REPORT_FILE, file_record
from crossan.export.spec import DEFAULT_OPSET, ExportSpec, item_encoder_spec, user_encoder_spec
from crossan.export.torchscript import export_torchscript
from crossan.export.validation import (
    AgreementResult,
    Case,
    Encoder,
    GridResult,
    OnnxEncoder,
    TorchEncoder,
    TorchScriptEncoder,
    catalogue_embeddings,
    check_agreement,
    item_cases,
    recommend,
    user_cases,
    validate_encoder,
)
from crossan.export.variant_export import FloatServing, VariantResult, check_variants, write_variants
from crossan.export.wrappers import ItemEncoder, UserEncoder
from crossan.zoo.backbones import StateExtractor, load_backbone
from crossan.zoo.core.errors import ConfigError
from crossan.zoo.data.dataset import SequenceDataset
from crossan.zoo.features.settings import FeatureSettings
from crossan.zoo.models.recommender import Recommender
from crossan.zoo.runs.run import Run, differing_identity_keys, finished_run_config, open_run
from crossan.zoo.runs.zero_shot import open_run_on

__all__ = [
    "REPORT_FILE",
    "TOP_K",
    "ExportedModel",
    "ExportReport",
    "export_model",
    "validate_grid",
    "run_extractors",
    "check_backbones",
    "export_run",
    "write_and_validate",
]

TOP_K = 10
REEMBEDDED_ITEMS = 32
"""Catalogue items the backbone check re-embeds from their raw content."""
FLOAT32_TIE_TOLERANCE = 1e-5
"""Score gap (relative to the user's best score) below which two items may swap places between
PyTorch and an exported encoder: float32 rounding moves scores by about 1e-6 of the best score,
and on a catalogue of 20,000 items (Amazon Scientific) some top-10 lists hold items closer than that."""
TIE_TOLERANCE = 1e-4
"""Score gap (relative to the user's best score) below which re-embedded items may swap places:
served states are within 1e-5 of PyTorch's, but about 0.3% of their elements round to the
neighbouring float16 value of the cache, which moves embeddings by about 1e-5."""
EXAMPLE_BATCH = 2
EXAMPLE_LENGTH = 5
UNRECORDED = frozenset({REPORT_FILE, TABLE_FILE, INDEX_FILE, SIDECAR_FILE})
"""Files the report records no size and hash of: itself, and the item table (with the index built
from it), which `OnnxRecommender.add_items(save=True)` rewrites; the table checks its own header,
ids and values when it is read."""


@dataclass(frozen=True)
class ExportedModel:
    """Where one model's exported encoders live and the specs they follow."""

    out_dir: Path
    item_spec: ExportSpec
    user_spec: ExportSpec

    def files(self) -> list[Path]:
        return [
            self.out_dir / name
            for spec in (self.item_spec, self.user_spec)
            for name in (spec.onnx_file, spec.torchscript_file)
        ]

    def references(self, model: Recommender) -> tuple[TorchEncoder, TorchEncoder]:
        """The eager (item, user) encoders the exports are compared with."""
        return TorchEncoder(ItemEncoder(model), self.item_spec), TorchEncoder(UserEncoder(model), self.user_spec)

    def runtimes(self) -> list[tuple[Encoder, Encoder]]:
        """(item, user) encoder pairs: onnxruntime on each available provider, then TorchScript."""
        pairs: list[tuple[Encoder, Encoder]] = [
            (
                OnnxEncoder(self.out_dir / self.item_spec.onnx_file, self.item_spec, provider),
                OnnxEncoder(self.out_dir / self.user_spec.onnx_file, self.user_spec, provider),
            )
            for provider in execution_providers()
        ]
        pairs.append(
            (
                TorchScriptEncoder(self.out_dir / self.item_spec.torchscript_file, self.item_spec),
                TorchScriptEncoder(self.out_dir / self.user_spec.torchscript_file, self.user_spec),
            )
        )
        return pairs


def export_model(model: Recommender, out_dir: Path, opset: int = DEFAULT_OPSET) -> ExportedModel:
    """Write `item_encoder.{onnx,pt}` and `user_encoder.{onnx,pt}` for `model` into `out_dir`.

    Both are traced on made-up inputs (`model.random_item_inputs` for the item encoder): the
    item encoder at batch `EXAMPLE_BATCH`, the user encoder at batch `EXAMPLE_BATCH` and length
    `EXAMPLE_LENGTH` (capped at max_seq_len), sizes the validation grid avoids.
    """
    model = model.eval()
    exported = ExportedModel(Path(out_dir), item_encoder_spec(model, opset), user_encoder_spec(model, opset))
    generator = torch.Generator().manual_seed(0)
    item_example = model.random_item_inputs(EXAMPLE_BATCH, generator)
    length = min(EXAMPLE_LENGTH, model.config.max_seq_len)
    padding_mask = torch.zeros(EXAMPLE_BATCH, length, dtype=torch.bool)
    padding_mask[0, : length - 1] = True
    user_example = (torch.randn(EXAMPLE_BATCH, length, model.item_embedding_width, generator=generator), padding_mask)
    for module, spec, example in (
        (ItemEncoder(model), exported.item_spec, item_example),
        (UserEncoder(model), exported.user_spec, user_example),
    ):
        export_onnx(module, spec, example, exported.out_dir / spec.onnx_file)
        export_torchscript(module, example, exported.out_dir / spec.torchscript_file)
    return exported


def validate_grid(
    model: Recommender, exported: ExportedModel, items: list[Case], users: list[Case]
) -> list[GridResult]:
    """Every exported encoder in every runtime against PyTorch at the given cases."""
    reference_items, reference_users = exported.references(model)
    results = []
    for item_encoder, user_encoder in exported.runtimes():
        results.append(validate_encoder(item_encoder, reference_items, items))
        results.append(validate_encoder(user_encoder, reference_users, users))
    return results


@dataclass
class ExportReport:
    """What `export_run` wrote and measured; saved as `validation.json` in the export folder."""

    run_dir: Path
    out_dir: Path
    preset: str
    specs: list[ExportSpec]
    grids: list[GridResult] = field(default_factory=list)
    agreements: list[AgreementResult] = field(default_factory=list)
    backbones: list[BackboneCheck] = field(default_factory=list)
    reembedded_error: float | None = None
    catalogue: str = ""
    zero_shot: bool = False
    variants: list[VariantResult] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "run": str(self.run_dir),
            "preset": self.preset,
            "catalogue": self.catalogue,
            "zero_shot": self.zero_shot,
            "specs": [s.to_dict() for s in self.specs],
            "max_abs_errors": [g.to_dict() for g in self.grids],
            "top_k_agreement": [a.to_dict() for a in self.agreements],
            "backbone_states": [c.to_dict() for c in self.backbones],
            "reembedded_items_max_abs_error": self.reembedded_error,
            "variants": {v.variant: v.to_dict() for v in self.variants},
            "files": sorted(p.name for p in self.out_dir.iterdir() if p.name != REPORT_FILE),
            RECORDS_KEY: {p.name: file_record(p) for p in sorted(self.out_dir.iterdir()) if p.name not in UNRECORDED},
            "versions": {
                "torch": torch.__version__,
                "onnx": onnx.__version__,
                "onnxruntime": ort.__version__,
                "python": platform.python_version(),
            },
        }

    def tables(self) -> list[Table]:
        """Max abs errors per encoder and runtime, and the top-k agreement per runtime."""
        errors = Table(title=f"{self.preset}: exported encoders vs PyTorch (max abs error over the shape grid)")
        for column in ("encoder", "runtime", "cases", "max abs error", "tolerance"):
            errors.add_column(column, justify="left" if column in ("encoder", "runtime") else "right")
        for grid in self.grids:
            errors.add_row(
                grid.encoder, grid.runtime, str(len(grid.errors)), f"{grid.max_abs_error:.2e}", f"{grid.tolerance:.0e}"
            )
        agreement = Table(title=f"top-{TOP_K} recommendations identical to PyTorch (test users, history masked)")
        for column in ("runtime", "users", "identical", "agreement", "near-tie swaps"):
            agreement.add_column(column, justify="left" if column == "runtime" else "right")
        for result in self.agreements:
            agreement.add_row(
                result.runtime,
                str(result.num_users),
                str(result.agreeing),
                f"{result.fraction:.2%}",
                f"{result.near_ties} (gap <= {result.tie_tolerance:.0e})" if result.tie_tolerance else "-",
            )
        tables = [errors, agreement]
        if self.backbones:
            tables.append(self.backbone_table())
        if self.variants:
            tables += self.variant_tables()
        return tables

    def backbone_table(self) -> Table:
        """Served backbone states against PyTorch per modality and provider."""
        backbones = Table(
            title=f"{self.preset}: served backbone states from raw content vs PyTorch "
            f"(re-embedded items: max abs error {self.reembedded_error:.2e} against the table)"
        )
        for column in ("modality", "runtime", "items", "max abs error", "tolerance"):
            backbones.add_column(column, justify="left" if column in ("modality", "runtime") else "right")
        for check in self.backbones:
            backbones.add_row(
                check.modality,
                f"onnxruntime {check.provider.removesuffix('ExecutionProvider')}",
                str(check.num_items),
                f"{check.max_abs_error:.2e}",
                f"{check.tolerance:.0e}",
            )
        return backbones

    def variant_tables(self) -> list[Table]:
        """Each variant file's size and error against float32, and each variant's served top-k lists."""
        files = Table(
            title=f"{self.preset}: optimised and int8 graphs vs float32 (onnxruntime CPU; relative = max abs "
            f"error / the float32 output's largest magnitude)"
        )
        files.add_column("file", no_wrap=True)
        for column in ("MB", "float32 MB", "max abs error", "relative", "tolerance"):
            files.add_column(column, justify="right")
        ranking = Table(
            title=f"top-{TOP_K} recommendations of the variants vs float32 (test users, history masked): every "
            f"item embedded by the variant, or float32's table as OnnxRecommender(variant=...) ranks it"
        )
        for column in ("variant", "users", "identical", "mean overlap", "float32 table: identical", "mean overlap"):
            ranking.add_column(column, justify="left" if column == "variant" else "right")
        for result in self.variants:
            for check in result.files:
                files.add_row(
                    check.written.file,
                    f"{check.record['bytes'] / 2**20:.2f}",
                    f"{check.float32_bytes / 2**20:.2f}",
                    f"{check.max_abs_error:.2e}",
                    f"{check.relative_error:.2e}",
                    f"{check.tolerance:g}",
                )
            ranking.add_row(
                result.variant,
                str(result.ranking.num_users),
                *(
                    cell
                    for check in (result.ranking, result.user_ranking)
                    for cell in (f"{check.identical} ({check.fraction:.2%})", f"{check.mean_overlap:.3f}")
                ),
            )
        return [files, ranking]


def run_extractors(run: Run) -> dict[str, StateExtractor]:
    """The run's backbones with the settings that built its feature cache, checked against the
    identity `config.json` recorded (same architecture, config and weights)."""
    settings = FeatureSettings.from_dict(run.config["feature_settings"])
    extractors = {}
    for modality, recorded in run.config["features"]["backbones"].items():
        backbone = load_backbone(settings.spec(modality))
        changed = differing_identity_keys(recorded, backbone.identity)
        if changed:
            raise ConfigError(
                f"the {modality} backbone is not the one {run.directory} was trained on ({', '.join(changed)} differ)"
            )
        extractors[modality] = StateExtractor(backbone, settings.side_layers, settings.text_max_tokens)
    return extractors


def check_backbones(
    extractors: dict[str, StateExtractor],
    specs: list[ExportSpec],
    dataset: SequenceDataset,
    out_dir: Path,
    rows: list[int],
    table: np.ndarray,
    report: ExportReport,
) -> np.ndarray:
    """Check the exported backbones (`specs`: signatures, then served states of catalogue `rows`
    on every execution provider, into `report.backbones`); return `table` with those rows
    re-embedded from their raw content on the CPU provider."""
    for spec in specs:
        OnnxEncoder(out_dir / spec.onnx_file, spec).check_signature()
    for provider in execution_providers():
        encoder = ContentEncoder(out_dir, [exact_float32(provider)])
        if encoder.providers != [provider]:
            raise RuntimeError(f"onnxruntime fell back from {provider} to {', '.join(encoder.providers)}")
        checks, served = validate_backbones(extractors, encoder, dataset, rows)
        report.backbones += checks
        if provider == CPU:
            reembedded = table.copy()
            reembedded[rows] = encoder.embed_states(served, rows)
    report.reembedded_error = float(np.abs(reembedded[rows] - table[rows]).max())
    return reembedded


def export_run(
    run_dir: Path,
    out_dir: Path | None = None,
    opset: int = DEFAULT_OPSET,
    with_backbones: bool = False,
    catalogue: SequenceDataset | None = None,
    cache_dir: Path | None = None,
    data_root: Path | None = None,
    optimize: bool = False,
    quantize: str | None = None,
) -> ExportReport:
    """Export and validate a training run into `out_dir` (default `<run_dir>/export`).

    The run's data set and feature cache are where it recorded them, or at `data_root` and
    under `cache_dir` when they moved (`open_run`). With `catalogue`, the item table is that
    data set's (`<run_dir>/export-<its name>` by default): zero-shot when the run never trained
    on its catalogue (`crossan.zoo.runs.zero_shot`, its features built under `cache_dir`,
    default the run's cache folder).

    Everything is written into a hidden folder beside `out_dir` and swapped in only after every
    check passed (`crossan.export.publishing.staged_export`): on any failure, the first failed
    check's `ExportValidationError` or an `ExportWriteError` for a failed write, `out_dir` keeps
    what it held. A file at `out_dir`, or a folder holding files no export writes, is refused
    up front (`ConfigError`).
    """
    run_dir = Path(run_dir)
    default_name = "export" if catalogue is None else f"export-{catalogue.name}"
    out_dir = Path(out_dir) if out_dir is not None else run_dir / default_name
    out_dir = out_dir.resolve() if out_dir.is_symlink() else out_dir  # replace the folder, not the link
    check_replaceable(out_dir)
    if catalogue is None:
        trained_on = finished_run_config(run_dir)["data"].get("catalogues")
        if trained_on:
            raise ConfigError(
                f"{run_dir} trained on {len(trained_on)} catalogues at once, whose item ids are each "
                "catalogue's own; export one catalogue at a time with --catalogue DIR"
            )
        run = open_run(run_dir, "cpu", data_root, cache_dir)
    elif data_root is not None:
        raise ConfigError("--data-root says where the run's own data set moved; with --catalogue it has no use")
    else:
        run = open_run_on(run_dir, catalogue, "cpu", Console(stderr=True), cache_dir)
    with staged_export(out_dir) as staging:
        report = write_and_validate(run, staging, opset, with_backbones, optimize, quantize)
    report.out_dir = out_dir
    return report


def write_and_validate(
    run: Run,
    out_dir: Path,
    opset: int = DEFAULT_OPSET,
    with_backbones: bool = False,
    optimize: bool = False,
    quantize: str | None = None,
) -> ExportReport:
    """Write and check a run's export in `out_dir`; raises an `ExportValidationError` on the first failure.

    Writes the four encoder files, `item_embeddings.safetensors` (computed by the exported ONNX
    item encoder on the CPU provider) and `validation.json` (with the size and sha256 of every
    file but the table) into `out_dir`. `with_backbones` adds the backbone files and
    `preprocessing.json`, checks the served states of `REEMBEDDED_ITEMS` real items against
    PyTorch, and requires the top-k lists to stay identical after those items are re-embedded
    from their raw content.

    Top-k lists must be identical except for swaps of near-ties: items whose PyTorch scores lie
    within `FLOAT32_TIE_TOLERANCE` (exported encoders) or `TIE_TOLERANCE` (re-embedded items) of
    each other, relative to the user's best score; such users are counted in the report.

    `optimize` and `quantize="int8"` then write every graph's `.opt.onnx` and `.int8.onnx` files,
    each checked against its float32 graph on the same inputs and ranked against float32's served
    top-k lists (`crossan.export.variant_export`; recorded under `variants`).
    """
    run_dir = run.directory
    model, dataset, features = run.model.eval(), run.dataset, run.features
    exported = export_model(model, out_dir, opset)
    report = ExportReport(run_dir, out_dir, run.config["preset"], [exported.item_spec, exported.user_spec])
    report.catalogue, report.zero_shot = dataset.name, run.zero_shot

    generator = torch.Generator().manual_seed(0)
    _, reference_users = exported.references(model)
    reference_table = model.catalogue_embeddings(features.gather, dataset.num_items).cpu().numpy()

    def sample_items(batch: int) -> tuple[torch.Tensor, ...]:
        return features.gather(torch.randint(0, dataset.num_items, (batch,), generator=generator))

    items = item_cases(sample_items)
    users = user_cases(torch.from_numpy(reference_table), model.config.max_seq_len)
    report.grids = validate_grid(model, exported, items, users)

    max_len = model.config.max_seq_len
    histories = [dataset.history(u, "test") for u in range(dataset.num_users)]
    reference_top = recommend(reference_users, reference_table, histories, max_len, TOP_K)

    def reference_scores(users: list[int]) -> np.ndarray:
        """PyTorch's scores of every item for `users`, relative to each user's largest."""
        window, mask = history_window([histories[u] for u in users], max_len)
        (vectors,) = reference_users(torch.from_numpy(reference_table[window]), torch.from_numpy(mask))
        scores = vectors @ reference_table.T
        return scores / np.abs(scores).max(axis=1, keepdims=True)

    onnx_table: np.ndarray | None = None
    for item_encoder, user_encoder in exported.runtimes():
        table = catalogue_embeddings(item_encoder, features.gather, dataset.num_items)
        top = recommend(user_encoder, table, histories, max_len, TOP_K)
        report.agreements.append(
            check_agreement(reference_top, top, user_encoder.runtime, TOP_K, reference_scores, FLOAT32_TIE_TOLERANCE)
        )
        if isinstance(item_encoder, OnnxEncoder) and item_encoder.provider == CPU:
            onnx_table, onnx_users, served_table, served_top = table, user_encoder, table, top
    if onnx_table is None:
        raise RuntimeError("onnxruntime's CPU provider did not run")
    rows: list[int] = []
    sources: dict[str, list[str]] = {}
    if with_backbones:
        rows = sorted(torch.randperm(dataset.num_items, generator=generator)[:REEMBEDDED_ITEMS].tolist())
        extractors = run_extractors(run)
        sources = {modality: item_sources(dataset, modality, rows) for modality in extractors}
        backbone_specs = export_backbones(extractors, out_dir, opset)
        report.specs += backbone_specs
        reembedded = check_backbones(extractors, backbone_specs, dataset, out_dir, rows, onnx_table, report)
        served_table = reembedded
        top = served_top = recommend(onnx_users, reembedded, histories, max_len, TOP_K)
        report.agreements.append(
            check_agreement(
                reference_top,
                top,
                f"{onnx_users.runtime}, {len(rows)} items re-embedded from raw content",
                TOP_K,
                reference_scores,
                TIE_TOLERANCE,
            )
        )
    if optimize or quantize is not None:
        serving = FloatServing(
            item_cases=items,
            user_cases=users,
            gather=features.gather,
            num_items=dataset.num_items,
            histories=histories,
            max_len=max_len,
            k=TOP_K,
            catalogue=onnx_table,
            table=served_table,
            top=served_top,
            content_rows=rows,
            content_sources=sources,
        )
        report.variants = check_variants(out_dir, write_variants(out_dir, report.specs, optimize, quantize), serving)
    save_item_table(
        out_dir / TABLE_FILE,
        onnx_table,
        dataset.item_ids,
        source=f"{exported.item_spec.onnx_file} in onnxruntime CPU, run {run_dir}",
    )
    (out_dir / REPORT_FILE).write_text(json.dumps(report.to_dict(), indent=1) + "\n")
    return report
