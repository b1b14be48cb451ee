"""Plain PyTorch reference for the gated modality mix + adapter down-projection.

    x = sum_k softmax(gate_logits)_k * states[k]      [N, W]
    h = act(x @ w_down + b_down)                       [N, r]

This is the ground truth the Triton kernel is tested against and the path CPU tensors take.
Input preparation and validation live here too, so both backends accept and reject exactly
the same inputs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["ACTIVATIONS", "gated_mix_down_reference", "prepare_inputs"]

ACTIVATIONS = ("relu", "gelu")

StatesLike = torch.Tensor | Sequence[torch.Tensor]


def prepare_inputs(
    states: StatesLike,
    gate_logits: torch.Tensor,
    w_down: torch.Tensor,
    b_down: torch.Tensor,
    activation: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stack, autocast and validate the inputs; returns (states [K, N, W], w_down, b_down).

    A sequence of K tensors [N, W] is stacked (one copy; pass a stacked tensor to avoid it).
    Under autocast the states and the down-projection are cast to the autocast dtype, as
    `F.linear` would be, so fp32 parameters can meet fp16 cached states. Raises ValueError
    for an unknown activation, wrong ranks, mismatched K / W / r, dtypes or devices.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    if not isinstance(states, torch.Tensor):
        states = list(states)
        if not states:
            raise ValueError("states is an empty sequence; expected K >= 1 tensors of shape [N, W]")
        shapes = {tuple(s.shape) for s in states}
        if len(shapes) != 1:
            raise ValueError(f"states in a sequence must share one shape [N, W], got {sorted(shapes)}")
        states = torch.stack(states)
    if torch.is_autocast_enabled(states.device.type):
        dtype = torch.get_autocast_dtype(states.device.type)
        states, w_down, b_down = states.to(dtype), w_down.to(dtype), b_down.to(dtype)

    if states.dim() != 3:
        raise ValueError(f"states must be [K, N, W], got shape {tuple(states.shape)}")
    k, _, width = states.shape
    if k < 1 or width < 1:
        raise ValueError(f"states must have K >= 1 and W >= 1, got shape {tuple(states.shape)}")
    if gate_logits.shape != (k,):
        raise ValueError(f"gate_logits must be [K] = [{k}] to match states, got {tuple(gate_logits.shape)}")
    if w_down.dim() != 2 or w_down.shape[0] != width:
        raise ValueError(
            f"w_down must be [W, r] with W = {width} (the [in, out] layout, i.e. linear.weight.T), "
            f"got {tuple(w_down.shape)}"
        )
    rank = w_down.shape[1]
    if rank < 1:
        raise ValueError("w_down must have r >= 1 output columns")
    if b_down.shape != (rank,):
        raise ValueError(f"b_down must be [r] = [{rank}] to match w_down, got {tuple(b_down.shape)}")
    if not states.is_floating_point() or not gate_logits.is_floating_point():
        raise ValueError(
            f"states and gate_logits must be floating point, got {states.dtype} and {gate_logits.dtype}"
        )
    if w_down.dtype != states.dtype or b_down.dtype != states.dtype:
        raise ValueError(
            f"states, w_down and b_down must share one dtype, got {states.dtype}, {w_down.dtype}, "
            f"{b_down.dtype}"
        )
    devices = {t.device for t in (states, gate_logits, w_down, b_down)}
    if len(devices) != 1:
        raise ValueError(f"all inputs must be on one device, got {sorted(map(str, devices))}")
    return states, w_down, b_down


def gated_mix_down_reference(
    states: StatesLike,
    gate_logits: torch.Tensor,
    w_down: torch.Tensor,
    b_down: torch.Tensor,
    activation: str = "relu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference (x [N, W], h [N, r]) in plain torch ops; autograd flows through it.

    The softmax and the weighted sum run in at least fp32 (float64 stays float64, which
    gradcheck needs); x is rounded to the states dtype before the GEMM, as the kernel does.
    """
    states, w_down, b_down = prepare_inputs(states, gate_logits, w_down, b_down, activation)
    compute_dtype = torch.promote_types(states.dtype, torch.float32)
    # The inputs are already in the autocast dtype; autocast must not recast the fp32 mix.
    with torch.autocast(states.device.type, enabled=False):
        gates = torch.softmax(gate_logits.to(compute_dtype), dim=0)
        x = torch.tensordot(gates, states.to(compute_dtype), dims=1).to(states.dtype)
        pre = torch.addmm(b_down, x, w_down)
        h = F.relu(pre) if activation == "relu" else F.gelu(pre)
    return x, h
