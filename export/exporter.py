"""Export a model's item and user encoders (ONNX and TorchScript) and validate them.

`export_model` and `validate_grid` work on any model; `export_run` does the whole job for a
training run: export, validation on real cached item states, the item-embedding table from
the exported item encoder, and top-k agreement with PyTorch for every test user.
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
from rich.table import Table

from export.item_table import TABLE_FILE, save_item_table
from export.onnx_export import export_onnx
from export.spec import DEFAULT_OPSET, ExportSpec, item_encoder_spec, user_encoder_spec
from export.torchscript import export_torchscript
from export.validation import (AgreementResult, Case, Encoder, GridResult, OnnxEncoder, TorchEncoder,
                               TorchScriptEncoder, catalogue_embeddings, check_agreement, item_cases,
                               onnx_providers, recommend, user_cases, validate_encoder)
from export.wrappers import ItemEncoder, UserEncoder
from zoo.models.base import Recommender
from zoo.runs import open_run

__all__ = ["REPORT_FILE", "TOP_K", "ExportedModel", "ExportReport", "export_model", "validate_grid", "export_run"]

REPORT_FILE = "validation.json"
TOP_K = 10
EXAMPLE_BATCH = 2
EXAMPLE_LENGTH = 5


@dataclass(frozen=True)
class ExportedModel:
    """Where one model's exported encoders live and the specs they follow."""

    out_dir: Path
    item_spec: ExportSpec
    user_spec: ExportSpec

    def files(self) -> list[Path]:
        return [self.out_dir / name for spec in (self.item_spec, self.user_spec)
                for name in (spec.onnx_file, spec.torchscript_file)]

    def references(self, model: Recommender) -> tuple[TorchEncoder, TorchEncoder]:
        """The eager (item, user) encoders the exports are compared with."""
        return TorchEncoder(ItemEncoder(model), self.item_spec), TorchEncoder(UserEncoder(model), self.user_spec)

    def runtimes(self) -> list[tuple[Encoder, Encoder]]:
        """(item, user) encoder pairs: onnxruntime on each available provider, then TorchScript."""
        pairs: list[tuple[Encoder, Encoder]] = [
            (OnnxEncoder(self.out_dir / self.item_spec.onnx_file, self.item_spec, provider),
             OnnxEncoder(self.out_dir / self.user_spec.onnx_file, self.user_spec, provider))
            for provider in onnx_providers()]
        pairs.append((TorchScriptEncoder(self.out_dir / self.item_spec.torchscript_file, self.item_spec),
                      TorchScriptEncoder(self.out_dir / self.user_spec.torchscript_file, self.user_spec)))
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
    user_example = (torch.randn(EXAMPLE_BATCH, length, model.config.embedding_dim, generator=generator),
                    padding_mask)
    for module, spec, example in ((ItemEncoder(model), exported.item_spec, item_example),
                                  (UserEncoder(model), exported.user_spec, user_example)):
        export_onnx(module, spec, example, exported.out_dir / spec.onnx_file)
        export_torchscript(module, example, exported.out_dir / spec.torchscript_file)
    return exported


def validate_grid(model: Recommender, exported: ExportedModel, items: list[Case],
                  users: list[Case]) -> list[GridResult]:
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

    def to_dict(self) -> dict[str, Any]:
        return {
            "run": str(self.run_dir), "preset": self.preset,
            "specs": [s.to_dict() for s in self.specs],
            "max_abs_errors": [g.to_dict() for g in self.grids],
            "top_k_agreement": [a.to_dict() for a in self.agreements],
            "files": sorted(p.name for p in self.out_dir.iterdir() if p.name != REPORT_FILE),
            "versions": {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": ort.__version__,
                         "python": platform.python_version()},
        }

    def tables(self) -> list[Table]:
        """Max abs errors per encoder and runtime, and the top-k agreement per runtime."""
        errors = Table(title=f"{self.preset}: exported encoders vs PyTorch (max abs error over the shape grid)")
        for column in ("encoder", "runtime", "cases", "max abs error", "tolerance"):
            errors.add_column(column, justify="left" if column in ("encoder", "runtime") else "right")
        for grid in self.grids:
            errors.add_row(grid.encoder, grid.runtime, str(len(grid.errors)), f"{grid.max_abs_error:.2e}",
                           f"{grid.tolerance:.0e}")
        agreement = Table(title=f"top-{TOP_K} recommendations identical to PyTorch (test users, history masked)")
        for column in ("runtime", "users", "identical", "agreement"):
            agreement.add_column(column, justify="left" if column == "runtime" else "right")
        for result in self.agreements:
            agreement.add_row(result.runtime, str(result.num_users), str(result.agreeing), f"{result.fraction:.2%}")
        return [errors, agreement]


def export_run(run_dir: Path, out_dir: Path | None = None, opset: int = DEFAULT_OPSET) -> ExportReport:
    """Export and validate a training run; raises an `ExportValidationError` on the first failure.

    Writes the four encoder files, `item_embeddings.safetensors` (computed by the exported ONNX
    item encoder on the CPU provider) and `validation.json` into `out_dir` (default
    `<run_dir>/export`).
    """
    run_dir = Path(run_dir)
    run = open_run(run_dir)
    model, dataset, features = run.model.eval(), run.dataset, run.features
    out_dir = Path(out_dir) if out_dir is not None else run_dir / "export"
    exported = export_model(model, out_dir, opset)
    report = ExportReport(run_dir, out_dir, run.config["preset"], [exported.item_spec, exported.user_spec])

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
    onnx_table: np.ndarray | None = None
    for item_encoder, user_encoder in exported.runtimes():
        table = catalogue_embeddings(item_encoder, features.gather, dataset.num_items)
        top = recommend(user_encoder, table, histories, max_len, TOP_K)
        report.agreements.append(check_agreement(reference_top, top, user_encoder.runtime, TOP_K))
        if isinstance(item_encoder, OnnxEncoder) and item_encoder.provider == "CPUExecutionProvider":
            onnx_table = table
    if onnx_table is None:
        raise RuntimeError("onnxruntime's CPU provider did not run")
    save_item_table(out_dir / TABLE_FILE, onnx_table, dataset.item_ids,
                    source=f"{exported.item_spec.onnx_file} in onnxruntime CPU, run {run_dir}")
    (out_dir / REPORT_FILE).write_text(json.dumps(report.to_dict(), indent=1) + "\n")
    return report
