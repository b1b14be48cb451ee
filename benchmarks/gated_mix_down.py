"""Benchmark one side layer's fused gated_mix_down against the eager reference and torch.compile(reference).

    python -m benchmarks.gated_mix_down [--preset crossan-tiva] [--n 704 45056] [--dtypes fp16 bf16]

(from the repository root; `python benchmarks/gated_mix_down.py` works once the project is
installed with `pip install -e .`).

Times the layer as the model calls it: a preset's side network (default crossan-tiva: M = 4
modalities, T = 4 towers, W = 768, r = 512) is built on the GPU, and its second side layer
is timed with the model's own inputs: the layer's slice of the layer-major states batch, the
previous layer's outputs, the gates' mixing matrix and pattern, and the stacked adapter down
weights as stored. Forward and forward+backward side by side in one run
(triton.testing.do_bench, median), with the fused path's achieved bandwidth. Byte model (what
the fused path reads and writes by design; P = number of (tower, source) pairs in the pattern):
    forward:          read sources P*N*W, w_down T*W*r, b_down T*r; write x T*N*W, h T*N*r
    forward+backward: forward, plus read grad_x T*N*W, grad_h T*N*r, h T*N*r, x T*N*W,
                      sources P*N*W, w_down T*W*r; write g T*N*W (fp32) and read it back, write
                      grad_previous T*N*W, grad_w T*W*r, grad_b T*r
Needs a CUDA GPU; on a machine without one it says so and exits with status 0.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

import crossan
from crossan.kernels.gated_mix_down import gated_mix_down, triton_available
from crossan.kernels.reference import gated_mix_down_reference
from crossan.zoo.models.config import StoredFeatures
from crossan.zoo.models.side_network import SideNetworkRecommender

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

# Peak memory bandwidth in GB/s, matched in order against torch.cuda.get_device_name().
KNOWN_BANDWIDTH_GBS = [
    ("H200", 4800.0),
    ("H100 NVL", 3900.0),
    ("H100 PCIe", 2000.0),
    ("H100", 3350.0),  # SXM, HBM3
    ("A100-SXM4-80GB", 2039.0),
    ("A100 80GB PCIe", 1935.0),
    ("A100", 1555.0),  # 40 GB parts
    ("L40S", 864.0),
    ("L4", 300.0),
    ("RTX 4090", 1008.0),
]


@dataclass
class Row:
    n: int
    dtype: str
    mode: str
    fused_ms: float
    eager_ms: float
    compiled_ms: float
    fused_gbs: float
    peak_fraction: float | None
    max_abs_diff_h: float


def device_bandwidth_gbs(name: str) -> float | None:
    """Peak bandwidth for a known GPU name, else None."""
    for pattern, gbs in KNOWN_BANDWIDTH_GBS:
        if pattern in name:
            return gbs
    return None


def traffic_bytes(
    pairs: int, towers: int, n: int, width: int, rank: int, element_size: int, with_backward: bool
) -> int:
    """Bytes under the module docstring's byte model."""
    forward = (
        pairs * n * width + towers * width * rank + towers * rank + towers * n * width + towers * n * rank
    ) * element_size
    if not with_backward:
        return forward
    backward = (
        2 * towers * n * width
        + 2 * towers * n * rank
        + pairs * n * width
        + towers * width * rank
        + towers * n * width
        + towers * width * rank
        + towers * rank
    ) * element_size
    return forward + backward + 2 * towers * n * width * 4  # g is fp32, written once and read once


def layer_inputs(model: SideNetworkRecommender, n: int, dtype: torch.dtype, layer: int = 1) -> dict:
    """The inputs the side network passes to gated_mix_down at `layer`, for n random items."""
    gen = torch.Generator(device="cuda").manual_seed(0)
    items = tuple(
        torch.randn(n, model.config.num_states, w, device="cuda", generator=gen, dtype=dtype)
        for w in model.config.backbone_widths
    )
    with torch.no_grad():
        states = model.side_states(items)
        mixing = model.side.gates.mixing()
        # The previous layer's outputs, computed as the side network computes them.
        first = model.side.layers[0]
        x, hidden = gated_mix_down(
            states[0],
            None,
            mixing[0],
            first.down_weight,
            first.down_bias,
            first.activation,
            "torch",
            model.side.gates.pattern,
        )
        previous = first.up_residual(x, hidden)
    adapters = model.side.layers[layer]
    return {
        "states": states[layer],
        "previous": previous.requires_grad_(),
        "mixing": mixing[layer].clone().requires_grad_(),
        "w_down": adapters.down_weight,
        "b_down": adapters.down_bias,
        "activation": adapters.activation,
        "pattern": model.side.gates.pattern,
    }


def bench_case(
    args: argparse.Namespace, model: SideNetworkRecommender, n: int, dtype_name: str, compiled_reference
) -> list[Row]:
    """Time the three implementations at one N and dtype, forward and forward+backward."""
    from triton.testing import do_bench

    dtype = DTYPES[dtype_name]
    model = model.to(dtype)
    inputs = layer_inputs(model, n, dtype)
    towers, width, rank = inputs["w_down"].shape
    gen = torch.Generator(device="cuda").manual_seed(1)
    grad_x = torch.randn(towers, n, width, device="cuda", dtype=dtype, generator=gen)
    grad_h = torch.randn(towers, n, rank, device="cuda", dtype=dtype, generator=gen)
    leaves = [inputs["previous"], inputs["mixing"], inputs["w_down"], inputs["b_down"]]
    positional = [inputs[k] for k in ("states", "previous", "mixing", "w_down", "b_down")]
    options = {"activation": inputs["activation"], "pattern": inputs["pattern"]}

    implementations = {
        "fused": lambda: gated_mix_down(*positional, backend="triton", **options),
        "eager": lambda: gated_mix_down_reference(*positional, **options),
        "compiled": lambda: compiled_reference(*positional, **options),
    }
    with torch.no_grad():
        h_fused = implementations["fused"]()[1]
        h_eager = implementations["eager"]()[1]
    max_abs_diff = (h_fused.float() - h_eager.float()).abs().max().item()

    def forward_backward(fn):
        def run() -> None:
            x, h = fn()
            torch.autograd.backward([x, h], [grad_x, grad_h])

        return run

    rows = []
    pairs = int(inputs["pattern"].sum())
    for mode in ("forward", "forward+backward"):
        times = {}
        for name, fn in implementations.items():
            if mode == "forward":
                with torch.no_grad():
                    times[name] = do_bench(fn, warmup=args.warmup_ms, rep=args.rep_ms, return_mode="median")
            else:
                times[name] = do_bench(
                    forward_backward(fn),
                    warmup=args.warmup_ms,
                    rep=args.rep_ms,
                    grad_to_none=leaves,
                    return_mode="median",
                )
        nbytes = traffic_bytes(pairs, towers, n, width, rank, positional[0].element_size(), mode != "forward")
        gbs = nbytes / (times["fused"] * 1e-3) / 1e9
        rows.append(
            Row(
                n=n,
                dtype=dtype_name,
                mode=mode,
                fused_ms=times["fused"],
                eager_ms=times["eager"],
                compiled_ms=times["compiled"],
                fused_gbs=gbs,
                peak_fraction=gbs / args.bandwidth_gbs if args.bandwidth_gbs else None,
                max_abs_diff_h=max_abs_diff,
            )
        )
    return rows


def print_table(rows: list[Row], device_name: str, bandwidth: float | None, args: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.table import Table

    peak = f"{bandwidth:.0f} GB/s" if bandwidth else "unknown (pass --bandwidth-gbs)"
    table = Table(
        title=f"gated_mix_down, one {args.preset} side layer (r={args.adapter_dim or 'preset'}) on {device_name} "
        f"(peak {peak})"
    )
    for column in (
        "N",
        "dtype",
        "pass",
        "fused ms",
        "eager ms",
        "compiled ms",
        "eager/fused",
        "compiled/fused",
        "fused GB/s",
        "% of peak",
        "max |dh|",
    ):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(
            str(row.n),
            row.dtype,
            row.mode,
            f"{row.fused_ms:.4f}",
            f"{row.eager_ms:.4f}",
            f"{row.compiled_ms:.4f}",
            f"{row.eager_ms / row.fused_ms:.2f}x",
            f"{row.compiled_ms / row.fused_ms:.2f}x",
            f"{row.fused_gbs:.0f}",
            f"{100 * row.peak_fraction:.0f}%" if row.peak_fraction is not None else "-",
            f"{row.max_abs_diff_h:.2e}",
        )
    Console().print(table)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--n",
        type=int,
        nargs="+",
        default=[64 * 11, 4096 * 11],
        help="rows N (batch x sequence positions); default 704 and 45056",
    )
    parser.add_argument(
        "--preset",
        default="crossan-tiva",
        choices=[
            name
            for name in crossan.list_models()
            if (config := crossan.preset_config(name)).backbone_modalities()
            and config.stored_features is StoredFeatures.STATES
        ],
        help="side-network preset",
    )
    parser.add_argument("--adapter-dim", type=int, default=None, help="adapter hidden size r (default: the preset's)")
    parser.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES), default=["fp16", "bf16"])
    parser.add_argument(
        "--bandwidth-gbs",
        type=float,
        default=None,
        help="peak memory bandwidth of the GPU in GB/s (default: looked up by device name)",
    )
    parser.add_argument("--warmup-ms", type=int, default=25, help="do_bench warm-up time per measurement")
    parser.add_argument("--rep-ms", type=int, default=100, help="do_bench measuring time per measurement")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows to this JSON file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print("benchmarks/gated_mix_down.py needs a CUDA GPU and none is available; nothing was measured.")
        return 0
    if not triton_available():
        print("benchmarks/gated_mix_down.py needs the triton package, which is not installed; nothing was measured.")
        return 0
    device_name = torch.cuda.get_device_name()
    if args.bandwidth_gbs is None:
        args.bandwidth_gbs = device_bandwidth_gbs(device_name)

    compiled_reference = torch.compile(gated_mix_down_reference, dynamic=False)
    model = crossan.create_model(args.preset, adapter_dim=args.adapter_dim).cuda()
    rows = [
        row
        for n in args.n
        for dtype_name in args.dtypes
        for row in bench_case(args, model, n, dtype_name, compiled_reference)
    ]
    print_table(rows, device_name, args.bandwidth_gbs, args)
    if args.json is not None:
        payload = {
            "device": device_name,
            "peak_gbs": args.bandwidth_gbs,
            "preset": args.preset,
            "adapter_dim": model.config.adapter_dim,
            "rows": [asdict(row) for row in rows],
        }
        args.json.write_text(json.dumps(payload, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
