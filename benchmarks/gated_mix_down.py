"""Benchmark the fused gated_mix_down against the eager reference and torch.compile(reference).

    python -m benchmarks.gated_mix_down [--n 704 45056] [--dtypes fp16 bf16] [--bandwidth-gbs 3350]

(from the repository root; `python benchmarks/gated_mix_down.py` works once the project is
installed with `pip install -e .`).

Times forward and forward+backward side by side in one run (triton.testing.do_bench, median)
at K=5, W=768, r=512 by default, and reports the fused path's achieved bandwidth. Byte models
(minimal traffic, each tensor touched once):
    forward:          read states K*N*W, w_down W*r, b_down r; write x N*W, h N*r
    forward+backward: forward, plus read grad_x N*W, grad_h N*r, h N*r, x N*W, states K*N*W,
                      w_down W*r; write grad_states K*N*W, grad_w W*r, grad_b r
Needs a CUDA GPU; on a machine without one it says so and exits with status 0.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from kernels import gated_mix_down, gated_mix_down_reference, triton_available

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


def traffic_bytes(k: int, n: int, width: int, rank: int, element_size: int, with_backward: bool) -> int:
    """Bytes under the module docstring's byte model."""
    forward = k * n * width + width * rank + rank + n * width + n * rank
    if not with_backward:
        return forward * element_size
    backward = 2 * n * width + 2 * n * rank + 2 * k * n * width + 2 * width * rank + rank
    return (forward + backward) * element_size


def bench_case(args: argparse.Namespace, n: int, dtype_name: str, compiled_reference) -> list[Row]:
    """Time the three implementations at one N and dtype, forward and forward+backward."""
    from triton.testing import do_bench

    dtype = DTYPES[dtype_name]
    gen = torch.Generator(device="cuda").manual_seed(0)
    states = torch.randn(args.k, n, args.width, device="cuda", generator=gen).to(dtype).requires_grad_()
    logits = torch.randn(args.k, device="cuda", generator=gen).requires_grad_()
    w_down = (0.01 * torch.randn(args.width, args.rank, device="cuda", generator=gen)).to(dtype).requires_grad_()
    b_down = torch.zeros(args.rank, device="cuda", dtype=dtype, requires_grad=True)
    grad_x = torch.randn(n, args.width, device="cuda", dtype=dtype, generator=gen)
    grad_h = torch.randn(n, args.rank, device="cuda", dtype=dtype, generator=gen)
    leaves = [states, logits, w_down, b_down]

    implementations = {
        "fused": lambda: gated_mix_down(states, logits, w_down, b_down, args.activation, backend="triton"),
        "eager": lambda: gated_mix_down_reference(states, logits, w_down, b_down, args.activation),
        "compiled": lambda: compiled_reference(states, logits, w_down, b_down, args.activation),
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
        nbytes = traffic_bytes(args.k, n, args.width, args.rank, states.element_size(), mode != "forward")
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
        title=f"gated_mix_down, K={args.k} W={args.width} r={args.rank} {args.activation} on {device_name} "
        f"(peak {peak})"
    )
    for column in ("N", "dtype", "pass", "fused ms", "eager ms", "compiled ms", "eager/fused", "compiled/fused",
                   "fused GB/s", "% of peak", "max |dh|"):
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
    parser.add_argument("--n", type=int, nargs="+", default=[64 * 11, 4096 * 11],
                        help="rows N (batch x sequence positions); default 704 and 45056")
    parser.add_argument("--k", type=int, default=5, help="number of mixed inputs K")
    parser.add_argument("--width", type=int, default=768, help="side width W")
    parser.add_argument("--rank", type=int, default=512, help="adapter hidden size r")
    parser.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES), default=["fp16", "bf16"])
    parser.add_argument("--activation", choices=["relu", "gelu"], default="relu")
    parser.add_argument("--bandwidth-gbs", type=float, default=None,
                        help="peak memory bandwidth of the GPU in GB/s (default: looked up by device name)")
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
        print("benchmarks/gated_mix_down.py needs the triton package, which is not installed; "
              "nothing was measured.")
        return 0
    device_name = torch.cuda.get_device_name()
    if args.bandwidth_gbs is None:
        args.bandwidth_gbs = device_bandwidth_gbs(device_name)

    compiled_reference = torch.compile(gated_mix_down_reference, dynamic=False)
    rows = [
        row
        for n in args.n
        for dtype_name in args.dtypes
        for row in bench_case(args, n, dtype_name, compiled_reference)
    ]
    print_table(rows, device_name, args.bandwidth_gbs, args)
    if args.json is not None:
        payload = {"device": device_name, "peak_gbs": args.bandwidth_gbs, "k": args.k, "width": args.width,
                   "rank": args.rank, "activation": args.activation, "rows": [asdict(row) for row in rows]}
        args.json.write_text(json.dumps(payload, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
