"""User-encoder latency and item-encoder throughput: PyTorch eager vs onnxruntime on this CPU.

    python benchmarks/export_latency.py --run weights/<run>      # a trained run
    python benchmarks/export_latency.py --preset crossan-tiva    # random weights, preset sizes

Both runtimes get the same inputs and the same number of intra-op threads (`--threads`, default
PyTorch's; on a CPU shared with other jobs, `--threads 1` gives steadier numbers). Every figure
is the median of `--repeats` timed calls after a warm-up. Ratios are onnxruntime / PyTorch:
below 1 for latency and above 1 for throughput mean onnxruntime is faster.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import onnxruntime as ort
import torch
from machine import cpu_name
from rich.console import Console
from rich.table import Table
from timing import median_seconds

from crossan.export.onnx_export import export_onnx
from crossan.export.spec import item_encoder_spec, user_encoder_spec
from crossan.export.wrappers import ItemEncoder, UserEncoder
from crossan.zoo.models import build_model, list_models, load_model, preset_config
from crossan.zoo.models.config import PAPER_BACKBONE_WIDTH, PAPER_NUM_STATES
from crossan.zoo.models.recommender import Recommender

USER_BATCHES = (1, 256)
ITEM_BATCH = 256
WARMUP = 5
CATALOGUE = 100_000


def benchmark_model(args: argparse.Namespace) -> tuple[Recommender, str]:
    """The trained model of `--run`, else `--preset` with random weights, fitted to a catalogue of
    `CATALOGUE` items whose cached features have the paper's shape (7 states, 768 wide)."""
    if args.run is not None:
        return load_model(args.run), str(args.run)
    config = preset_config(args.preset)
    config = config.fit_to_data(
        CATALOGUE, {m: (PAPER_NUM_STATES, PAPER_BACKBONE_WIDTH) for m in config.backbone_modalities()}
    )
    torch.manual_seed(0)
    return build_model(config).eval(), f"{args.preset} (random weights)"


def user_inputs(model: Recommender, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Full-length sequences (T = max_seq_len) with random left padding, at least one item each."""
    length = model.config.max_seq_len
    kept = torch.randint(1, length + 1, (batch,))
    padding_mask = torch.arange(length) < (length - kept).unsqueeze(1)
    return torch.randn(batch, length, model.item_embedding_width), padding_mask


def session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def compare(
    module: torch.nn.Module,
    onnx_session: ort.InferenceSession,
    input_names: tuple[str, ...],
    inputs: tuple[torch.Tensor, ...],
    repeats: int,
) -> tuple[float, float]:
    """Median seconds per call of (PyTorch eager, onnxruntime) on the same inputs."""
    feed = {name: tensor.numpy() for name, tensor in zip(input_names, inputs, strict=True)}
    with torch.inference_mode():
        eager = median_seconds(lambda: module(*inputs), repeats, WARMUP)
    return eager, median_seconds(lambda: onnx_session.run(None, feed), repeats, WARMUP)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--run", type=Path, help="run directory written by train.py")
    source.add_argument(
        "--preset",
        default="crossan-tiva",
        choices=list_models(),
        metavar="NAME",
        help="preset to build with random weights when --run is not given (default crossan-tiva)",
    )
    parser.add_argument("--repeats", type=int, default=30, help="timed calls per measurement")
    parser.add_argument("--threads", type=int, help="intra-op threads of both runtimes (default: PyTorch's)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    model, label = benchmark_model(args)
    threads = torch.get_num_threads()
    items, users = ItemEncoder(model).eval(), UserEncoder(model).eval()
    item_spec, user_spec = item_encoder_spec(model), user_encoder_spec(model)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        item_path = export_onnx(items, item_spec, model.random_item_inputs(2), Path(tmp) / item_spec.onnx_file)
        user_path = export_onnx(users, user_spec, user_inputs(model, 2), Path(tmp) / user_spec.onnx_file)
        item_session, user_session = session(item_path, threads), session(user_path, threads)
        for batch in USER_BATCHES:
            eager, onnx = compare(users, user_session, user_spec.input_names, user_inputs(model, batch), args.repeats)
            rows.append((f"user latency, B={batch}", f"{eager * 1e3:.3f} ms", f"{onnx * 1e3:.3f} ms", onnx / eager))
        eager, onnx = compare(
            items, item_session, item_spec.input_names, model.random_item_inputs(ITEM_BATCH), args.repeats
        )
        rows.append(
            (
                f"item throughput, B={ITEM_BATCH}",
                f"{ITEM_BATCH / eager:,.0f} items/s",
                f"{ITEM_BATCH / onnx:,.0f} items/s",
                eager / onnx,
            )
        )

    table = Table(
        title=f"{label}: PyTorch eager vs onnxruntime (CPU provider)",
        caption=f"{cpu_name()}; {threads} intra-op threads each; user sequences of "
        f"T={model.config.max_seq_len}; median of {args.repeats} calls; "
        f"torch {torch.__version__}, onnxruntime {ort.__version__}",
    )
    for column in ("measurement", "PyTorch eager", "onnxruntime", "onnxruntime / PyTorch"):
        table.add_column(column, justify="left" if column == "measurement" else "right")
    for name, eager_text, onnx_text, ratio in rows:
        table.add_row(name, eager_text, onnx_text, f"{ratio:.2f}")
    Console().print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
