"""Export a training run's encoders to ONNX and TorchScript and validate them against PyTorch.

crossan export --run weights/<run> [--out DIR] [--opset N] [--with-backbones]
python -m crossan.export --run weights/<run>          # the same command
crossan export --run weights/<run> --catalogue DIR    # another catalogue's item table (zero-shot)
crossan export --run weights/<run> --triton-repo DIR  # also a Triton Inference Server model repository
crossan export --run weights/<run> --optimize --quantize int8   # also <graph>.opt.onnx and <graph>.int8.onnx
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from crossan.export.spec import DEFAULT_OPSET
from crossan.zoo.core.errors import ConfigError
from crossan.zoo.data import DATA_KINDS


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The options of `crossan export` (and `python -m crossan.export`)."""
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", type=Path, required=True, help="run directory written by train.py")
    parser.add_argument("--out", type=Path, help="output folder (default: <run>/export)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset version")
    parser.add_argument(
        "--with-backbones",
        action="store_true",
        help="also export the frozen backbones and their preprocessing, so new items are "
        "embedded from raw content without PyTorch (checked on real items of the run)",
    )
    parser.add_argument(
        "--optimize",
        action="store_true",
        help="also write every graph optimised offline by onnxruntime for its CPU provider, as <graph>.opt.onnx "
        "(the text and image backbones through its transformer optimiser), checked against float32",
    )
    parser.add_argument(
        "--quantize",
        choices=("int8",),
        help="also write every graph with dynamically quantised int8 weights, as <graph>.int8.onnx (CPU "
        "provider), checked against float32 within a looser tolerance (docs/serving.md)",
    )
    parser.add_argument(
        "--catalogue",
        type=Path,
        metavar="DIR",
        help="a data set whose items the export serves (zero-shot when the run never trained on its "
        "catalogue); default out: <run>/export-<its name>",
    )
    parser.add_argument(
        "--data", choices=DATA_KINDS, help="with --catalogue: its data set's kind (default: the run's own)"
    )
    parser.add_argument(
        "--data-root",
        type=Path,
        metavar="DIR",
        help="where the run's own data set is now, when it moved (checked by fingerprint)",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        metavar="DIR",
        help="where the run's feature cache is now, when it moved, or where --catalogue's features are built "
        "(default: where the run recorded it)",
    )
    parser.add_argument(
        "--triton-repo",
        type=Path,
        metavar="DIR",
        help="also write a Triton Inference Server model repository (a new or empty folder): one ONNX Runtime "
        "model per encoder, with the item table and index beside them (docs/serving.md)",
    )
    parser.add_argument(
        "--triton-max-batch-size",
        type=int,
        default=None,
        metavar="N",
        help="with --triton-repo: requests Triton may batch into one run of an encoder (default 64)",
    )
    return parser


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Export, validate, print the tables; the output folder changes only when everything passed.

    `run_cli` prints user errors as one line: a missing run, a bad option, an `--out` that is a
    file or a folder of other files, non-finite encoder outputs, a failed write (a full disk).
    Any other failed check propagates as its ExportValidationError with a traceback: the export
    code or runtime disagrees with PyTorch, which is a bug to report."""
    args = build_parser(prog).parse_args(argv)
    if args.catalogue is None and args.data is not None:
        raise ConfigError("--data names the kind of --catalogue: give --catalogue DIR")
    if args.catalogue is not None and args.data_root is not None:
        raise ConfigError("--data-root says where the run's own data set moved; with --catalogue it has no use")
    if args.triton_max_batch_size is not None and args.triton_repo is None:
        raise ConfigError(
            "--triton-max-batch-size applies to the repository --triton-repo writes: give --triton-repo DIR"
        )
    if args.triton_repo is not None:
        from crossan.export.triton_repository import DEFAULT_MAX_BATCH_SIZE, check_new_repository

        check_new_repository(args.triton_repo)  # before the export's minutes, not after
        if args.triton_max_batch_size is None:
            args.triton_max_batch_size = DEFAULT_MAX_BATCH_SIZE
        if args.triton_max_batch_size < 1:
            raise ConfigError(f"--triton-max-batch-size must be at least 1, got {args.triton_max_batch_size}")
    # Imported here, when the command runs, so that `--help` loads neither PyTorch nor ONNX.
    from crossan.export.exporter import REPORT_FILE, export_run
    from crossan.export.reading import PARTIAL
    from crossan.zoo.data import load_dataset
    from crossan.zoo.runs.run import finished_run_config

    catalogue = None
    if args.catalogue is not None:
        kind = args.data or finished_run_config(args.run)["data"]["kind"]
        catalogue = load_dataset(kind, args.catalogue, args.cache_dir or Path(".cache"))
    console = Console()
    with console.status(f"exporting and validating {args.run}"):
        report = export_run(
            args.run,
            args.out,
            args.opset,
            args.with_backbones,
            catalogue,
            args.cache_dir,
            args.data_root,
            args.optimize,
            args.quantize,
        )
    if report.zero_shot:
        console.print(f"zero-shot: the item table is {report.catalogue}'s, a catalogue {args.run} never trained on")
    for table in report.tables():
        console.print(table)
    console.print(
        f"wrote {', '.join(sorted(p.name for p in report.out_dir.iterdir()))} to {report.out_dir} "
        f"(report: {REPORT_FILE})"
    )
    if args.triton_repo is not None:
        from crossan.export.triton_repository import write_triton_repository

        models = write_triton_repository(report.out_dir, args.triton_repo, args.triton_max_batch_size)
        console.print(f"wrote a Triton model repository to {args.triton_repo}: {', '.join(models)}")
    left = sorted(p.name for p in report.out_dir.parent.glob(f".{report.out_dir.name}{PARTIAL}*"))
    if left:
        console.print(
            f"note: {', '.join(left)} beside it: left by an export that was killed (or is still running); "
            f"nothing loads it, delete it"
        )
    return 0
