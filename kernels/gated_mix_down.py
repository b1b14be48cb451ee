"""Fused gated modality mix + adapter down-projection in Triton, with autograd and dispatch.

    x = sum_k softmax(gate_logits)_k * states[k]      [N, W]   (kept for the adapter residual)
    h = act(x @ w_down + b_down)                       [N, r]

With cached backbone states the layer is bound by reading the K x N x W state values, so the
forward kernel reads every state tile once, mixes the K tiles in registers (fp32) into the A
tile of the GEMM and writes x as a by-product instead of materialising it first.

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
from typing import NamedTuple

import torch
from torch import nn

from kernels.reference import ACTIVATIONS, StatesLike, gated_mix_down_reference, prepare_inputs

try:
    import triton
    import triton.language as tl

    # tl.sum's combiner: tl.reduce with it is what tl.sum does, and the interpreter maps it to
    # numpy's sum (see the module docstring for why tl.sum itself is avoided).
    _add_combine = tl.standard._sum_combine
except ImportError:  # Triton ships Linux wheels only; the reference path works everywhere.
    triton = None
    tl = None

__all__ = ["BACKENDS", "GatedMixDown", "gated_mix_down", "triton_available"]

BACKENDS = ("auto", "triton", "torch")


def triton_available() -> bool:
    """Whether the triton package imports here (it says nothing about a GPU being present)."""
    return triton is not None


def _interpreter_enabled() -> bool:
    """Whether the Triton interpreter is switched on, which lets the kernels run on CPU tensors."""
    return os.environ.get("TRITON_INTERPRET") == "1"


# ----------------------------------------------------------------------------------------------
# Kernels. Plain functions here; `_kernels()` wraps them with triton.jit and triton.autotune.
# ----------------------------------------------------------------------------------------------


def _gated_mix_down_fwd_kernel(
    states_ptr, gates_ptr, w_ptr, b_ptr, x_ptr, h_ptr,
    n_rows, width, rank,
    stride_sk, stride_sn, stride_sw,
    stride_wi, stride_wr,
    stride_b,
    stride_xn, stride_xw,
    stride_hn, stride_hr,
    NUM_STATES: tl.constexpr, BLOCK_K: tl.constexpr, ACTIVATION: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_W: tl.constexpr,
):
    """One [BLOCK_N, BLOCK_R] tile of h; programs with pid_r == 0 also write their rows of x."""
    # Programs that share a row block are adjacent, so their state reads hit L2.
    pid = tl.program_id(0)
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
    offs_k = tl.arange(0, BLOCK_K)
    gates = tl.load(gates_ptr + offs_k, mask=offs_k < NUM_STATES, other=0.0)

    acc = tl.full((BLOCK_N, BLOCK_R), 0.0, tl.float32)
    for w_start in range(0, width, BLOCK_W):
        cols_w = w_start + tl.arange(0, BLOCK_W)
        w_mask = cols_w < width
        tile_mask = row_mask[:, None] & w_mask[None, :]
        state_ptrs = states_ptr + rows64[:, None] * stride_sn + cols_w[None, :] * stride_sw
        mixed = tl.full((BLOCK_N, BLOCK_W), 0.0, tl.float32)
        for k in tl.static_range(NUM_STATES):
            gate = tl.reduce(tl.where(offs_k == k, gates, 0.0), 0, _add_combine)
            tile = tl.load(state_ptrs, mask=tile_mask, other=0.0)
            mixed += gate * tile.to(tl.float32)
            state_ptrs += stride_sk  # pointer increments keep the k offset in 64 bits
        # Round to the storage dtype before the GEMM: the tensor cores take it and it makes
        # h the product of exactly the x that is returned.
        a_tile = mixed.to(x_ptr.dtype.element_ty)
        x_ptrs = x_ptr + rows64[:, None] * stride_xn + cols_w[None, :] * stride_xw
        tl.store(x_ptrs, a_tile, mask=x_row_mask[:, None] & w_mask[None, :])
        w_ptrs = w_ptr + cols_w[:, None] * stride_wi + cols_r[None, :] * stride_wr
        w_tile = tl.load(w_ptrs, mask=w_mask[:, None] & r_mask[None, :], other=0.0)
        acc = tl.dot(a_tile, w_tile, acc, input_precision="ieee")

    bias = tl.load(b_ptr + cols_r * stride_b, mask=r_mask, other=0.0)
    acc += bias.to(tl.float32)[None, :]
    if ACTIVATION == "relu":
        acc = tl.maximum(acc, 0.0)
    else:
        acc = 0.5 * acc * (1.0 + tl.math.erf(acc * 0.7071067811865476))
    h_ptrs = h_ptr + rows64[:, None] * stride_hn + cols_r[None, :] * stride_hr
    tl.store(h_ptrs, acc.to(h_ptr.dtype.element_ty), mask=row_mask[:, None] & r_mask[None, :])


def _gated_mix_down_bwd_kernel(
    grad_pre_ptr, w_ptr, grad_x_ptr, states_ptr, gates_ptr, grad_states_ptr, partial_ptr,
    n_rows, width, rank, num_partials,
    stride_gpn, stride_gpr,
    stride_wi, stride_wr,
    stride_gxn, stride_gxw,
    stride_sk, stride_sn, stride_sw,
    stride_gsk, stride_gsn, stride_gsw,
    NUM_STATES: tl.constexpr, BLOCK_K: tl.constexpr,
    HAS_GRAD_X: tl.constexpr, STATES_NEED_GRAD: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_R: tl.constexpr,
):
    """One [BLOCK_N, BLOCK_W] tile of g = grad_pre @ w_down^T + grad_x, used in place.

    From the tile in registers it writes grad_states[k] = gate_k * g and the partial sums
    sum(g * states[k]) for every k (partial_ptr[k, pid], reduced on the host), so g is never
    stored and each state tile is read once.
    """
    pid = tl.program_id(0)
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
        gp_ptrs = grad_pre_ptr + rows64[:, None] * stride_gpn + cols_r[None, :] * stride_gpr
        gp_tile = tl.load(gp_ptrs, mask=row_mask[:, None] & r_mask[None, :], other=0.0)
        # w_down^T tile [BLOCK_R, BLOCK_W], read through swapped strides (no transposed copy).
        wt_ptrs = w_ptr + cols_r[:, None] * stride_wr + cols_w[None, :] * stride_wi
        wt_tile = tl.load(wt_ptrs, mask=r_mask[:, None] & w_mask[None, :], other=0.0)
        acc = tl.dot(gp_tile, wt_tile, acc, input_precision="ieee")
    if HAS_GRAD_X:
        gx_ptrs = grad_x_ptr + rows64[:, None] * stride_gxn + cols_w[None, :] * stride_gxw
        acc += tl.load(gx_ptrs, mask=tile_mask, other=0.0).to(tl.float32)

    offs_k = tl.arange(0, BLOCK_K)
    gates = tl.load(gates_ptr + offs_k, mask=offs_k < NUM_STATES, other=0.0)
    state_ptrs = states_ptr + rows64[:, None] * stride_sn + cols_w[None, :] * stride_sw
    grad_state_ptrs = grad_states_ptr + rows64[:, None] * stride_gsn + cols_w[None, :] * stride_gsw
    for k in tl.static_range(NUM_STATES):
        tile = tl.load(state_ptrs, mask=tile_mask, other=0.0).to(tl.float32)
        tl.store(partial_ptr + k * num_partials + pid, tl.reduce(acc * tile, None, _add_combine))
        state_ptrs += stride_sk
        if STATES_NEED_GRAD:
            gate = tl.reduce(tl.where(offs_k == k, gates, 0.0), 0, _add_combine)
            grad_tile = (gate * acc).to(grad_states_ptr.dtype.element_ty)
            tl.store(grad_state_ptrs, grad_tile, mask=tile_mask)
            grad_state_ptrs += stride_gsk


# ----------------------------------------------------------------------------------------------
# Configs and wrapping
# ----------------------------------------------------------------------------------------------


def _interpreter_configs() -> list:
    """A single tile for the interpreter. It pays per operation, not per element, so this tile
    is as large as it can be while odd test shapes still cross several tile borders."""
    return [triton.Config({"BLOCK_N": 32, "BLOCK_R": 64, "BLOCK_W": 64}, num_warps=4, num_stages=1)]


def _cuda_forward_configs() -> list:
    """Forward tiles (BLOCK_N, BLOCK_R, BLOCK_W, warps, stages): wide BLOCK_R means fewer
    programs re-read the same state rows, narrow BLOCK_N keeps the accumulator in registers.
    The two-stage tiles at the end fit shared memory for fp32 and large K, where the
    autotuner drops the others as out of resources."""
    tiles = [
        (64, 128, 64, 4, 3),
        (64, 256, 32, 8, 3),
        (128, 128, 32, 8, 3),
        (128, 256, 32, 8, 3),
        (32, 256, 64, 4, 3),
        (32, 128, 64, 4, 4),
        (64, 64, 64, 4, 4),
        (128, 64, 64, 4, 3),
        (64, 128, 32, 4, 2),
        (32, 64, 32, 4, 2),
    ]
    return [
        triton.Config({"BLOCK_N": bn, "BLOCK_R": br, "BLOCK_W": bw}, num_warps=warps, num_stages=stages)
        for bn, br, bw, warps, stages in tiles
    ]


def _cuda_backward_configs() -> list:
    """Backward tiles (BLOCK_N, BLOCK_W, BLOCK_R, warps, stages) over grad_x_total [N, W]."""
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
    forward: object
    backward: object


@functools.cache
def _build_kernels(interpret: bool) -> _Kernels:
    """Wrap the kernels for one mode.

    The tuning key leaves N out on purpose: N changes with every training batch and re-tuning
    per batch would cost far more than it wins. K is in it because it sets the shared memory a
    tile needs. The backward partial sums are zeroed before each tuning trial, since tiles of
    different sizes write different slots.
    """
    forward_configs = _interpreter_configs() if interpret else _cuda_forward_configs()
    backward_configs = _interpreter_configs() if interpret else _cuda_backward_configs()
    key = ["width", "rank", "NUM_STATES"]
    forward = triton.autotune(configs=forward_configs, key=key)(triton.jit(_gated_mix_down_fwd_kernel))
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


def _launch_forward(
    states: torch.Tensor, gates: torch.Tensor, w_down: torch.Tensor, b_down: torch.Tensor, activation: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the forward kernel; states [K, N, W], gates [K] fp32 -> x [N, W], h [N, r]."""
    num_states, n_rows, width = states.shape
    rank = w_down.shape[1]
    x = states.new_empty((n_rows, width))
    h = states.new_empty((n_rows, rank))
    if n_rows == 0:
        return x, h

    def grid(meta: dict) -> tuple[int]:
        return (triton.cdiv(n_rows, meta["BLOCK_N"]) * triton.cdiv(rank, meta["BLOCK_R"]),)

    with _device_guard(states):
        _kernels().forward[grid](
            states, gates, w_down, b_down, x, h,
            n_rows, width, rank,
            *states.stride(),
            *w_down.stride(),
            b_down.stride(0),
            *x.stride(),
            *h.stride(),
            NUM_STATES=num_states,
            BLOCK_K=triton.next_power_of_2(num_states),
            ACTIVATION=activation,
        )
    return x, h


def _launch_backward(
    grad_pre: torch.Tensor,
    w_down: torch.Tensor,
    grad_x: torch.Tensor | None,
    states: torch.Tensor,
    gates: torch.Tensor,
    states_need_grad: bool,
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Run the backward kernel; returns (grad_states [K, N, W] or None, d [K] fp32) where
    d_k = sum(grad_x_total * states[k]) and grad_x_total = grad_pre @ w_down^T + grad_x."""
    num_states, n_rows, width = states.shape
    rank = w_down.shape[1]
    grad_states = torch.empty_like(states, memory_format=torch.contiguous_format) if states_need_grad else None
    if n_rows == 0:
        return grad_states, gates.new_zeros(num_states)

    kernel = _kernels().backward
    # The program count depends on the tile the autotuner picks, so size the partial-sum
    # buffer for the smallest tile and zero it: slots no program writes add nothing.
    num_partials = max(
        triton.cdiv(n_rows, cfg.kwargs["BLOCK_N"]) * triton.cdiv(width, cfg.kwargs["BLOCK_W"])
        for cfg in kernel.configs
    )
    partials = torch.zeros((num_states, num_partials), dtype=torch.float32, device=states.device)
    # Stand-ins for absent tensors are never read or written (HAS_GRAD_X / STATES_NEED_GRAD).
    grad_x_arg = grad_x if grad_x is not None else grad_pre
    grad_x_strides = grad_x.stride() if grad_x is not None else (0, 0)
    grad_states_arg = grad_states if grad_states is not None else states
    grad_states_strides = grad_states.stride() if grad_states is not None else (0, 0, 0)

    def grid(meta: dict) -> tuple[int]:
        return (triton.cdiv(n_rows, meta["BLOCK_N"]) * triton.cdiv(width, meta["BLOCK_W"]),)

    with _device_guard(states):
        kernel[grid](
            grad_pre, w_down, grad_x_arg, states, gates, grad_states_arg, partials,
            n_rows, width, rank, num_partials,
            *grad_pre.stride(),
            *w_down.stride(),
            *grad_x_strides,
            *states.stride(),
            *grad_states_strides,
            NUM_STATES=num_states,
            BLOCK_K=triton.next_power_of_2(num_states),
            HAS_GRAD_X=grad_x is not None,
            STATES_NEED_GRAD=states_need_grad,
        )
    return grad_states, partials.sum(dim=1)


def _gelu_derivative(pre: torch.Tensor) -> torch.Tensor:
    """d/dz of exact GELU z * Phi(z): Phi(z) + z * phi(z)."""
    cdf = 0.5 * (1.0 + torch.erf(pre * (1.0 / math.sqrt(2.0))))
    pdf = torch.exp(-0.5 * pre * pre) * (1.0 / math.sqrt(2.0 * math.pi))
    return cdf + pre * pdf


class _GatedMixDownFunction(torch.autograd.Function):
    """Autograd around the two kernels.

    Saved: states (the caller's input, alive anyway), the fp32 softmax gates [K], w_down, and
    the outputs x (needed by the caller for the residual and here for grad_w) and, for ReLU, h.
    Recomputed: nothing for ReLU, whose derivative is h > 0; for GELU the pre-activation
    x @ w_down + b_down, one GEMM, instead of keeping another [N, r] tensor alive. The mixed
    input x is never rebuilt from the states.
    """

    @staticmethod
    def forward(
        ctx,
        states: torch.Tensor,
        gate_logits: torch.Tensor,
        w_down: torch.Tensor,
        b_down: torch.Tensor,
        activation: str,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        gates = torch.softmax(gate_logits.detach().float(), dim=0).contiguous()
        x, h = _launch_forward(states, gates, w_down, b_down, activation)
        ctx.save_for_backward(states, gates, w_down, b_down, x, h if activation == "relu" else None)
        ctx.activation = activation
        ctx.logits_dtype = gate_logits.dtype
        ctx.set_materialize_grads(False)
        return x, h

    @staticmethod
    def backward(ctx, grad_x: torch.Tensor | None, grad_h: torch.Tensor | None):
        states, gates, w_down, b_down, x, h = ctx.saved_tensors
        states_need_grad, logits_need_grad, w_need_grad, b_need_grad = ctx.needs_input_grad[:4]

        if grad_h is None:
            grad_pre = x.new_zeros((x.shape[0], w_down.shape[1]))
        elif ctx.activation == "relu":
            grad_pre = grad_h.masked_fill(h <= 0, 0)
        else:
            pre = torch.addmm(b_down, x, w_down).float()
            grad_pre = (grad_h.float() * _gelu_derivative(pre)).to(x.dtype)

        grad_w = x.t() @ grad_pre if w_need_grad else None
        grad_b = grad_pre.sum(dim=0, dtype=torch.float32).to(b_down.dtype) if b_need_grad else None

        grad_states = grad_logits = None
        if states_need_grad or logits_need_grad:
            grad_states, d = _launch_backward(grad_pre, w_down, grad_x, states, gates, states_need_grad)
            if logits_need_grad:
                grad_logits = (gates * (d - (gates * d).sum())).to(ctx.logits_dtype)
        return grad_states, grad_logits, grad_w, grad_b, None


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
    states: StatesLike,
    gate_logits: torch.Tensor,
    w_down: torch.Tensor,
    b_down: torch.Tensor,
    activation: str = "relu",
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gated mix of K inputs and the adapter down-projection, differentiable in every input.

    Args:
        states: [K, N, W] (or a sequence of K tensors [N, W], stacked with one copy).
        gate_logits: [K]; the softmax over them is taken in fp32.
        w_down: [W, r], the [in, out] layout (`linear.weight.T` works, no copy needed).
        b_down: [r].
        activation: "relu" or "gelu" (exact erf GELU).
        backend: "auto" (Triton for CUDA tensors, the reference on CPU), "triton" or "torch".

    Returns:
        x = sum_k softmax(gate_logits)_k * states[k]  [N, W] and h = act(x @ w_down + b_down)
        [N, r], both in the dtype of states.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    states, w_down, b_down = prepare_inputs(states, gate_logits, w_down, b_down, activation)
    if not _use_triton(states, backend):
        return gated_mix_down_reference(states, gate_logits, w_down, b_down, activation)
    with torch.autocast(states.device.type, enabled=False):
        return _GatedMixDownFunction.apply(states, gate_logits, w_down, b_down, activation)


class GatedMixDown(nn.Module):
    """Thin module: K gate logits (init 0, uniform mix) and a W -> r down-projection
    (weight N(0, 0.01), bias 0, as the Houlsby adapter initialises it). forward(states
    [K, N, W]) -> (x [N, W], h [N, r])."""

    def __init__(
        self, num_inputs: int, width: int, rank: int, activation: str = "relu", backend: str = "auto"
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.activation = activation
        self.backend = backend
        self.gate_logits = nn.Parameter(torch.zeros(num_inputs))
        self.w_down = nn.Parameter(torch.empty(width, rank).normal_(0.0, 0.01))
        self.b_down = nn.Parameter(torch.zeros(rank))

    def forward(self, states: StatesLike) -> tuple[torch.Tensor, torch.Tensor]:
        return gated_mix_down(states, self.gate_logits, self.w_down, self.b_down, self.activation, self.backend)

    def extra_repr(self) -> str:
        k, (width, rank) = self.gate_logits.numel(), self.w_down.shape
        return f"num_inputs={k}, width={width}, rank={rank}, activation={self.activation!r}"
