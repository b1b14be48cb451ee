"""One side layer's gated mix + adapter down-projection for all towers, in Triton, with autograd and dispatch.

    x[t] = sum_m G[t, m] S[m] + sum_k G[t, M + k] Z[k]     [T, N, W]  (kept for the adapter residual)
    h[t] = act(x[t] @ w_down[t] + b_down[t])                 [T, N, r]

(`crossan.kernels.reference` explains the sources S, Z, the mixing matrix G and the pattern.) With
cached backbone states the layer is bound by reading the sources, so one launch covers every
tower of the layer and every program reads the source tiles it needs straight from `S` and
`Z` (no stacked copy per tower), mixes them in registers (fp32) into the A tile of the GEMM
and writes x as a by-product instead of materialising it first.

What is read how often, forward: a program owns one `[BLOCK_N, BLOCK_R]` tile of one tower's h
and reads each source tile its tower uses once per output tile (sources outside the tower's
pattern are not loaded). On CUDA BLOCK_R covers the whole of r up to 512 (the autotuner only
keeps such tiles), so for r <= 512 every state tile is read once per tower that uses it; for
r > 512 the row block's sources are read once per 512 columns of r (twice at r = 1024),
because a `[BLOCK_N, BLOCK_R]` fp32 accumulator wider than 512 no longer fits the registers
of one program. A source shared by several towers (CROSSAN's previous outputs) is read once
by each tower's programs: keeping all towers' accumulators in one program would not fit.

Backward: a program computes one tile of `g[t] = grad_pre[t] @ w_down[t]^T + grad_x[t]` for
one tower, stores it (fp32) and, while the tile is in registers, the partial sums
`sum(g[t] * source_j)` for the tower's sources (the mixing-matrix gradient), reading each
source tile once per tower. The source gradients `G^T g` then are one matrix product over
the towers (cuBLAS), which reads g once instead of once per source.

`triton.jit` decides between compiled and interpreted kernels from TRITON_INTERPRET when it
wraps a function, so a process that imported triton before setting the variable (pytest
collecting a module that imports transformers, which imports torch._dynamo and so triton)
still holds compiled versions of triton.language's own jit helpers (tl.zeros, tl.sum,
tl.cdiv), which an interpreted kernel cannot call. Hence: the kernels are wrapped on first
use (`_kernels()`), not at import, and use only builtins (tl.full, integer ceil-division,
tl.reduce with Triton's add combiner), so they run interpreted whatever the import order.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
from typing import Any, NamedTuple

import torch

from crossan.kernels.backends import BACKENDS
from crossan.kernels.reference import ACTIVATIONS, effective_mixing, mix_down_prepared, prepare_inputs

try:
    import triton
    import triton.language as tl

    # tl.sum's combiner: tl.reduce with it is what tl.sum does, and the interpreter maps it to
    # numpy's sum (see the module docstring for why tl.sum itself is avoided).
    _add_combine = tl.standard._sum_combine
except ImportError:  # Triton ships Linux wheels only; the reference path works everywhere.
    triton = None
    tl = None

__all__ = ["ACTIVATIONS", "BACKENDS", "gated_mix_down", "triton_available"]

MAX_BLOCK_R = 512
"""Widest r tile a forward program accumulates in registers (see the module docstring)."""


def triton_available() -> bool:
    """Whether the triton package imports here (it says nothing about a GPU being present)."""
    return triton is not None


def _interpreter_enabled() -> bool:
    """Whether the Triton interpreter is switched on, which lets the kernels run on CPU tensors."""
    return os.environ.get("TRITON_INTERPRET") == "1"


# ----------------------------------------------------------------------------------------------
# Kernels. Plain functions here; `_kernels()` wraps them with triton.jit and triton.autotune.
# ----------------------------------------------------------------------------------------------


def _gated_mix_down_fwd_kernel(  # type: ignore[no-untyped-def]  # Triton types the pointers, sizes, constexprs
    states_ptr,
    previous_ptr,
    mixing_ptr,
    pattern_ptr,
    w_ptr,
    b_ptr,
    x_ptr,
    h_ptr,
    n_rows,
    width,
    rank,
    stride_sm,
    stride_sn,
    stride_sw,
    stride_zt,
    stride_zn,
    stride_zw,
    stride_gt,
    stride_gs,
    stride_wt,
    stride_wi,
    stride_wr,
    stride_bt,
    stride_br,
    stride_xt,
    stride_xn,
    stride_xw,
    stride_ht,
    stride_hn,
    stride_hr,
    NUM_MODALITIES: tl.constexpr,
    NUM_TOWERS: tl.constexpr,
    HAS_PREVIOUS: tl.constexpr,
    ACTIVATION: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_W: tl.constexpr,
):
    """One [BLOCK_N, BLOCK_R] tile of h[tower]; programs with pid_r == 0 also write their rows of x."""
    # Axis 0 runs fastest, so the programs sharing a row block of one tower are adjacent and
    # their source reads hit L2.
    pid = tl.program_id(0)
    tower = tl.program_id(1).to(tl.int64)
    num_r_blocks = (rank + BLOCK_R - 1) // BLOCK_R
    pid_n = pid // num_r_blocks
    pid_r = pid % num_r_blocks

    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < n_rows
    rows64 = rows.to(tl.int64)
    cols_r = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    r_mask = cols_r < rank
    # Only the first program along r writes x, so x is stored once per row block. (Spelled as
    # a row limit: the interpreter mis-types a block mask and-ed with a scalar condition.)
    x_row_mask = rows < tl.where(pid_r == 0, n_rows, 0)
    gates_ptr = mixing_ptr + tower * stride_gt
    used_ptr = pattern_ptr + tower * stride_gt

    acc = tl.full((BLOCK_N, BLOCK_R), 0.0, tl.float32)
    for w_start in range(0, width, BLOCK_W):
        cols_w = w_start + tl.arange(0, BLOCK_W)
        w_mask = cols_w < width
        mixed = tl.full((BLOCK_N, BLOCK_W), 0.0, tl.float32)
        source_ptrs = states_ptr + rows64[:, None] * stride_sn + cols_w[None, :] * stride_sw
        for m in tl.static_range(NUM_MODALITIES):
            # A source outside the tower's pattern gets an all-false mask: no memory traffic.
            used_rows = rows < tl.where(tl.load(used_ptr + m * stride_gs) != 0, n_rows, 0)
            tile = tl.load(source_ptrs, mask=used_rows[:, None] & w_mask[None, :], other=0.0)
            mixed += tl.load(gates_ptr + m * stride_gs) * tile.to(tl.float32)
            source_ptrs += stride_sm  # pointer increments keep the source offset in 64 bits
        if HAS_PREVIOUS:
            source_ptrs = previous_ptr + rows64[:, None] * stride_zn + cols_w[None, :] * stride_zw
            for k in tl.static_range(NUM_TOWERS):
                used_rows = rows < tl.where(tl.load(used_ptr + (NUM_MODALITIES + k) * stride_gs) != 0, n_rows, 0)
                tile = tl.load(source_ptrs, mask=used_rows[:, None] & w_mask[None, :], other=0.0)
                mixed += tl.load(gates_ptr + (NUM_MODALITIES + k) * stride_gs) * tile.to(tl.float32)
                source_ptrs += stride_zt
        # Round to the storage dtype before the GEMM: the tensor cores take it and it makes
        # h the product of exactly the x that is returned.
        a_tile = mixed.to(x_ptr.dtype.element_ty)
        x_ptrs = x_ptr + tower * stride_xt + rows64[:, None] * stride_xn + cols_w[None, :] * stride_xw
        tl.store(x_ptrs, a_tile, mask=x_row_mask[:, None] & w_mask[None, :])
        w_ptrs = w_ptr + tower * stride_wt + cols_w[:, None] * stride_wi + cols_r[None, :] * stride_wr
        w_tile = tl.load(w_ptrs, mask=w_mask[:, None] & r_mask[None, :], other=0.0)
        acc = tl.dot(a_tile, w_tile, acc, input_precision="ieee")

    bias = tl.load(b_ptr + tower * stride_bt + cols_r * stride_br, mask=r_mask, other=0.0)
    acc += bias.to(tl.float32)[None, :]
    if ACTIVATION == "relu":
        acc = tl.maximum(acc, 0.0)
    else:
        acc = 0.5 * acc * (1.0 + tl.math.erf(acc * 0.7071067811865476))
    h_ptrs = h_ptr + tower * stride_ht + rows64[:, None] * stride_hn + cols_r[None, :] * stride_hr
    tl.store(h_ptrs, acc.to(h_ptr.dtype.element_ty), mask=row_mask[:, None] & r_mask[None, :])


def _gated_mix_down_bwd_kernel(  # type: ignore[no-untyped-def]  # Triton types the pointers, sizes, constexprs
    grad_pre_ptr,
    w_ptr,
    grad_x_ptr,
    states_ptr,
    previous_ptr,
    pattern_ptr,
    g_ptr,
    partial_ptr,
    n_rows,
    width,
    rank,
    num_partials,
    stride_pt,
    stride_pn,
    stride_pr,
    stride_wt,
    stride_wi,
    stride_wr,
    stride_xt,
    stride_xn,
    stride_xw,
    stride_sm,
    stride_sn,
    stride_sw,
    stride_zt,
    stride_zn,
    stride_zw,
    stride_gt,
    stride_gs,
    stride_ot,
    stride_on,
    stride_ow,
    NUM_MODALITIES: tl.constexpr,
    NUM_TOWERS: tl.constexpr,
    HAS_GRAD_X: tl.constexpr,
    HAS_PREVIOUS: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_W: tl.constexpr,
    BLOCK_R: tl.constexpr,
):
    """One [BLOCK_N, BLOCK_W] tile of g[tower] = grad_pre[tower] @ w_down[tower]^T + grad_x[tower].

    Stores the tile (fp32) and, from registers, the partial sums sum(g * source_j) of every
    source j of the tower into partial_ptr[tower, j, pid] (reduced on the host).
    """
    pid = tl.program_id(0)
    tower = tl.program_id(1).to(tl.int64)
    num_w_blocks = (width + BLOCK_W - 1) // BLOCK_W
    pid_n = pid // num_w_blocks
    pid_w = pid % num_w_blocks

    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < n_rows
    rows64 = rows.to(tl.int64)
    cols_w = pid_w * BLOCK_W + tl.arange(0, BLOCK_W)
    w_mask = cols_w < width
    tile_mask = row_mask[:, None] & w_mask[None, :]

    acc = tl.full((BLOCK_N, BLOCK_W), 0.0, tl.float32)
    for r_start in range(0, rank, BLOCK_R):
        cols_r = r_start + tl.arange(0, BLOCK_R)
        r_mask = cols_r < rank
        gp_ptrs = grad_pre_ptr + tower * stride_pt + rows64[:, None] * stride_pn + cols_r[None, :] * stride_pr
        gp_tile = tl.load(gp_ptrs, mask=row_mask[:, None] & r_mask[None, :], other=0.0)
        # w_down^T tile [BLOCK_R, BLOCK_W], read through swapped strides (no transposed copy).
        wt_ptrs = w_ptr + tower * stride_wt + cols_r[:, None] * stride_wr + cols_w[None, :] * stride_wi
        wt_tile = tl.load(wt_ptrs, mask=r_mask[:, None] & w_mask[None, :], other=0.0)
        acc = tl.dot(gp_tile, wt_tile, acc, input_precision="ieee")
    if HAS_GRAD_X:
        gx_ptrs = grad_x_ptr + tower * stride_xt + rows64[:, None] * stride_xn + cols_w[None, :] * stride_xw
        acc += tl.load(gx_ptrs, mask=tile_mask, other=0.0).to(tl.float32)
    g_ptrs = g_ptr + tower * stride_ot + rows64[:, None] * stride_on + cols_w[None, :] * stride_ow
    tl.store(g_ptrs, acc, mask=tile_mask)

    used_ptr = pattern_ptr + tower * stride_gt
    partials = partial_ptr + (tower * (NUM_MODALITIES + NUM_TOWERS)) * num_partials + pid
    source_ptrs = states_ptr + rows64[:, None] * stride_sn + cols_w[None, :] * stride_sw
    for m in tl.static_range(NUM_MODALITIES):
        used_rows = rows < tl.where(tl.load(used_ptr + m * stride_gs) != 0, n_rows, 0)
        tile = tl.load(source_ptrs, mask=used_rows[:, None] & w_mask[None, :], other=0.0).to(tl.float32)
        tl.store(partials + m * num_partials, tl.reduce(acc * tile, None, _add_combine))
        source_ptrs += stride_sm
    if HAS_PREVIOUS:
        source_ptrs = previous_ptr + rows64[:, None] * stride_zn + cols_w[None, :] * stride_zw
        for k in tl.static_range(NUM_TOWERS):
            used_rows = rows < tl.where(tl.load(used_ptr + (NUM_MODALITIES + k) * stride_gs) != 0, n_rows, 0)
            tile = tl.load(source_ptrs, mask=used_rows[:, None] & w_mask[None, :], other=0.0).to(tl.float32)
            tl.store(partials + (NUM_MODALITIES + k) * num_partials, tl.reduce(acc * tile, None, _add_combine))
            source_ptrs += stride_zt


# ----------------------------------------------------------------------------------------------
# Configs and wrapping
# ----------------------------------------------------------------------------------------------


def _interpreter_configs() -> list:
    """A single tile for the interpreter. It pays per operation, not per element, so this tile
    is as large as it can be while odd test shapes still cross several tile borders."""
    return [triton.Config({"BLOCK_N": 32, "BLOCK_R": 64, "BLOCK_W": 64}, num_warps=4, num_stages=1)]


def _cuda_forward_configs() -> list:
    """Forward tiles (BLOCK_N, BLOCK_R, BLOCK_W, warps, stages) for each BLOCK_R the pruning
    keeps: narrow BLOCK_N with the widest BLOCK_R keeps the accumulator in registers; the
    two-stage tiles fit shared memory for fp32."""
    tiles = [
        (16, 512, 32, 8, 2),
        (32, 512, 32, 8, 2),
        (64, 512, 32, 8, 2),
        (32, 256, 64, 8, 3),
        (64, 256, 32, 8, 3),
        (128, 256, 32, 8, 2),
        (64, 128, 64, 4, 3),
        (128, 128, 32, 8, 3),
        (64, 64, 64, 4, 4),
        (128, 64, 64, 4, 3),
    ]
    return [
        triton.Config({"BLOCK_N": bn, "BLOCK_R": br, "BLOCK_W": bw}, num_warps=warps, num_stages=stages)
        for bn, br, bw, warps, stages in tiles
    ]


def _forward_block_r(rank: int) -> int:
    """The BLOCK_R a forward program uses on CUDA: all of r (at least 64), at most MAX_BLOCK_R."""
    return min(max(triton.next_power_of_2(rank), 64), MAX_BLOCK_R)


def _keep_full_r_tiles(configs: list[Any], named_args: dict[str, Any], **kwargs: Any) -> list[Any]:
    """Autotuner pruning: only tiles whose BLOCK_R covers r (up to MAX_BLOCK_R), so that a
    program reads its sources once per output tile (module docstring)."""
    block_r = _forward_block_r(named_args["rank"])
    return [config for config in configs if config.kwargs["BLOCK_R"] == block_r]


def _cuda_backward_configs() -> list:
    """Backward tiles (BLOCK_N, BLOCK_W, BLOCK_R, warps, stages) over g [N, W] of one tower."""
    tiles = [
        (64, 128, 64, 4, 3),
        (64, 64, 64, 4, 4),
        (128, 128, 32, 8, 3),
        (128, 64, 64, 4, 3),
        (32, 128, 64, 4, 4),
        (64, 256, 32, 8, 3),
        (32, 64, 32, 4, 2),
    ]
    return [
        triton.Config({"BLOCK_N": bn, "BLOCK_W": bw, "BLOCK_R": br}, num_warps=warps, num_stages=stages)
        for bn, bw, br, warps, stages in tiles
    ]


class _Kernels(NamedTuple):
    # Autotuned Triton JIT functions (launched as kernel[grid](...)); Triton ships no types.
    forward: Any
    backward: Any


@functools.cache
def _build_kernels(interpret: bool) -> _Kernels:
    """Wrap the kernels for one mode.

    The tuning key leaves N out on purpose: N changes with every training batch and re-tuning
    per batch would cost far more than it wins. M and T are in it because they set the
    number of source tiles a program reads. The backward partial sums are zeroed before each
    tuning trial, since tiles of different sizes write different slots.
    """
    forward_configs = _interpreter_configs() if interpret else _cuda_forward_configs()
    backward_configs = _interpreter_configs() if interpret else _cuda_backward_configs()
    prune = None if interpret else {"early_config_prune": _keep_full_r_tiles}
    key = ["width", "rank", "NUM_MODALITIES", "NUM_TOWERS", "HAS_PREVIOUS"]
    forward = triton.autotune(configs=forward_configs, key=key, prune_configs_by=prune)(
        triton.jit(_gated_mix_down_fwd_kernel)
    )
    backward = triton.autotune(configs=backward_configs, key=key, reset_to_zero=["partial_ptr"])(
        triton.jit(_gated_mix_down_bwd_kernel)
    )
    return _Kernels(forward, backward)


def _kernels() -> _Kernels:
    return _build_kernels(_interpreter_enabled())


def _device_guard(tensor: torch.Tensor) -> contextlib.AbstractContextManager:
    """Make the tensor's GPU current so Triton launches on it (a no-op context on CPU)."""
    return torch.cuda.device(tensor.device) if tensor.is_cuda else contextlib.nullcontext()


# ----------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------


def _source_args(states: torch.Tensor, previous: torch.Tensor | None) -> tuple[torch.Tensor, tuple[int, ...]]:
    """The previous-output pointer and strides; a stand-in that is never read when absent."""
    return (previous, previous.stride()) if previous is not None else (states, (0, 0, 0))


def _launch_forward(
    states: torch.Tensor,
    previous: torch.Tensor | None,
    weights: torch.Tensor,
    used: torch.Tensor,
    w_down: torch.Tensor,
    b_down: torch.Tensor,
    activation: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the forward kernel; weights [T, M + T] fp32 and used [T, M + T] int32 share strides."""
    num_modalities, n_rows, width = states.shape
    num_towers, _, rank = w_down.shape
    x = states.new_empty((num_towers, n_rows, width))
    h = states.new_empty((num_towers, n_rows, rank))
    if n_rows == 0:
        return x, h
    previous_arg, previous_strides = _source_args(states, previous)

    def grid(meta: dict) -> tuple[int, int]:
        return (triton.cdiv(n_rows, meta["BLOCK_N"]) * triton.cdiv(rank, meta["BLOCK_R"]), num_towers)

    with _device_guard(states):
        _kernels().forward[grid](
            states,
            previous_arg,
            weights,
            used,
            w_down,
            b_down,
            x,
            h,
            n_rows,
            width,
            rank,
            *states.stride(),
            *previous_strides,
            *weights.stride(),
            *w_down.stride(),
            *b_down.stride(),
            *x.stride(),
            *h.stride(),
            NUM_MODALITIES=num_modalities,
            NUM_TOWERS=num_towers,
            HAS_PREVIOUS=previous is not None,
            ACTIVATION=activation,
        )
    return x, h


def _launch_backward(
    grad_pre: torch.Tensor,
    w_down: torch.Tensor,
    grad_x: torch.Tensor | None,
    states: torch.Tensor,
    previous: torch.Tensor | None,
    used: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the backward kernel; returns g [T, N, W] fp32 (the gradient of x, through the
    down-projection and the residual) and d [T, M + T] fp32 with d[t, j] = sum(g[t] * source_j)."""
    num_modalities, n_rows, width = states.shape
    num_towers, _, rank = w_down.shape
    g = torch.empty((num_towers, n_rows, width), dtype=torch.float32, device=states.device)
    sources = num_modalities + num_towers
    if n_rows == 0:
        return g, torch.zeros((num_towers, sources), dtype=torch.float32, device=states.device)

    kernel = _kernels().backward
    # The program count depends on the tile the autotuner picks, so size the partial-sum
    # buffer for the smallest tile and zero it: slots no program writes add nothing.
    num_partials = max(
        triton.cdiv(n_rows, cfg.kwargs["BLOCK_N"]) * triton.cdiv(width, cfg.kwargs["BLOCK_W"]) for cfg in kernel.configs
    )
    partials = torch.zeros((num_towers, sources, num_partials), dtype=torch.float32, device=states.device)
    # Stand-ins for absent tensors are never read (HAS_GRAD_X / HAS_PREVIOUS).
    grad_x_arg, grad_x_strides = (grad_x, grad_x.stride()) if grad_x is not None else (grad_pre, (0, 0, 0))
    previous_arg, previous_strides = _source_args(states, previous)

    def grid(meta: dict) -> tuple[int, int]:
        return (triton.cdiv(n_rows, meta["BLOCK_N"]) * triton.cdiv(width, meta["BLOCK_W"]), num_towers)

    with _device_guard(states):
        kernel[grid](
            grad_pre,
            w_down,
            grad_x_arg,
            states,
            previous_arg,
            used,
            g,
            partials,
            n_rows,
            width,
            rank,
            num_partials,
            *grad_pre.stride(),
            *w_down.stride(),
            *grad_x_strides,
            *states.stride(),
            *previous_strides,
            *used.stride(),
            *g.stride(),
            NUM_MODALITIES=num_modalities,
            NUM_TOWERS=num_towers,
            HAS_GRAD_X=grad_x is not None,
            HAS_PREVIOUS=previous is not None,
        )
    return g, partials.sum(dim=2)


def _gelu_derivative(pre: torch.Tensor) -> torch.Tensor:
    """d/dz of exact GELU z * Phi(z): Phi(z) + z * phi(z)."""
    cdf = 0.5 * (1.0 + torch.erf(pre * (1.0 / math.sqrt(2.0))))
    pdf = torch.exp(-0.5 * pre * pre) * (1.0 / math.sqrt(2.0 * math.pi))
    return cdf + pre * pdf


class _GatedMixDownFunction(torch.autograd.Function):
    """Autograd around the two kernels.

    Saved: the sources (the caller's inputs, alive anyway), the fp32 effective mixing matrix,
    w_down, and the outputs x (needed by the caller for the residual and here for grad_w) and,
    for ReLU, h. Recomputed: nothing for ReLU, whose derivative is h > 0; for GELU the
    pre-activation x @ w_down + b_down, one batched GEMM, instead of keeping another
    [T, N, r] tensor alive. The mixed input x is never rebuilt from the sources.
    """

    @staticmethod
    def forward(
        ctx: Any,
        states: torch.Tensor,
        previous: torch.Tensor | None,
        mixing: torch.Tensor,
        w_down: torch.Tensor,
        b_down: torch.Tensor,
        pattern: torch.Tensor | None,
        activation: str,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        weights = effective_mixing(mixing.detach(), pattern, torch.float32).contiguous()
        used = torch.ones_like(weights, dtype=torch.int32) if pattern is None else pattern.to(torch.int32).contiguous()
        x, h = _launch_forward(states, previous, weights, used, w_down, b_down, activation)
        ctx.save_for_backward(states, previous, weights, used, w_down, b_down, x, h if activation == "relu" else None)
        ctx.activation = activation
        ctx.mixing_dtype = mixing.dtype
        ctx.set_materialize_grads(False)
        return x, h

    @staticmethod
    def backward(ctx: Any, grad_x: torch.Tensor | None, grad_h: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        states, previous, weights, used, w_down, b_down, x, h = ctx.saved_tensors
        states_need_grad, previous_need_grad, mixing_need_grad, w_need_grad, b_need_grad = ctx.needs_input_grad[:5]

        if grad_h is None:
            grad_pre = x.new_zeros((*x.shape[:2], w_down.shape[2]))
        elif ctx.activation == "relu":
            grad_pre = grad_h.masked_fill(h <= 0, 0)
        else:
            pre = torch.baddbmm(b_down.unsqueeze(1), x, w_down).float()
            grad_pre = (grad_h.float() * _gelu_derivative(pre)).to(x.dtype)

        grad_w = torch.bmm(x.mT, grad_pre) if w_need_grad else None
        grad_b = grad_pre.sum(dim=1, dtype=torch.float32).to(b_down.dtype) if b_need_grad else None

        grad_states = grad_previous = grad_mixing = None
        if states_need_grad or previous_need_grad or mixing_need_grad:
            g, d = _launch_backward(grad_pre, w_down, grad_x, states, previous, used)
            if mixing_need_grad:
                grad_mixing = d.to(ctx.mixing_dtype)  # zero outside the pattern: those sources are not loaded
            num_modalities, n_rows, width = states.shape
            flat_g = g.view(g.shape[0], n_rows * width)
            if states_need_grad:
                grad_states = (weights[:, :num_modalities].t() @ flat_g).view(states.shape).to(states.dtype)
            if previous_need_grad:
                grad_previous = (weights[:, num_modalities:].t() @ flat_g).view(previous.shape).to(previous.dtype)
        return grad_states, grad_previous, grad_mixing, grad_w, grad_b, None, None


def _use_triton(states: torch.Tensor, backend: str) -> bool:
    """Pick the path: 'auto' takes Triton for CUDA tensors, 'triton' insists or explains why not."""
    if backend == "torch":
        return False
    if backend == "auto":
        return states.is_cuda and triton is not None
    if triton is None:
        raise RuntimeError("backend='triton' needs the triton package, which is not installed")
    if states.is_cuda:
        return True
    if not _interpreter_enabled():
        raise RuntimeError(
            "backend='triton' on CPU tensors needs the Triton interpreter: set TRITON_INTERPRET=1 "
            "in the environment (before triton is imported), move the tensors to a CUDA device, "
            "or use backend='auto' / 'torch'"
        )
    if states.dtype == torch.bfloat16:
        raise RuntimeError("the Triton interpreter mishandles bfloat16; use float16/float32 on CPU")
    return True


def gated_mix_down(
    states: torch.Tensor,
    previous: torch.Tensor | None,
    mixing: torch.Tensor,
    w_down: torch.Tensor,
    b_down: torch.Tensor,
    activation: str = "relu",
    backend: str = "auto",
    pattern: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gated mix of one side layer's sources and every tower's adapter down-projection,
    differentiable in every input (shapes and meaning in `crossan.kernels.reference`).

    Args:
        states: [M, N, W], the layer's backbone states (a strided view is fine).
        previous: [T, N, W], the towers' previous outputs, or None when they are all zero.
        mixing: [T, M + T], mixing weights (applied in fp32).
        w_down: [T, W, r], the [in, out] layout (`down_weight.mT` of `[T, r, W]` works, no copy).
        b_down: [T, r].
        activation: "relu" or "gelu" (exact erf GELU).
        backend: "auto" (Triton for CUDA tensors, the reference on CPU), "triton" or "torch".
        pattern: optional bool [T, M + T], the sources each tower reads; the rest count as zero.

    Returns:
        x [T, N, W] and h = act(x @ w_down + b_down) [T, N, r], both in the dtype of states.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    inputs = prepare_inputs(states, previous, mixing, w_down, b_down, activation, pattern)
    if not _use_triton(inputs.states, backend):
        return mix_down_prepared(inputs, activation)
    with torch.autocast(inputs.states.device.type, enabled=False):
        return _GatedMixDownFunction.apply(*inputs[:5], inputs.pattern, activation)
