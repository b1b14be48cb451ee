"""Plain PyTorch reference for one side layer's gated mix + adapter down-projection, all towers at once.

With M modalities and T towers, at side layer l the sources are the M backbone states `S_l`
`[M, N, W]` and the T towers' previous outputs `Z_{l-1}` `[T, N, W]`; a mixing matrix `G`
`[T, M + T]` says how much of each source goes into each tower:

    x[t] = sum_m G[t, m] S_l[m] + sum_k G[t, M + k] Z_{l-1}[k]     [T, N, W]
    h[t] = act(x[t] @ w_down[t] + b_down[t])                         [T, N, r]

An optional boolean `pattern [T, M + T]` names the sources each tower reads at all (CROSSAN's
tower t reads its own state and every tower's output, INDSAN's only its own two); entries
outside it count as zero, get no gradient, and the Triton kernel does not load them.

This is the ground truth the Triton kernel is tested against and the path CPU tensors take.
It reads every source where it lives: the mix is two matrix products with the sources
flattened to `[sources, N * W]` (`S_l` and `Z_{l-1}` are each read once for all towers),
and the down-projection is one batched matrix product over the towers. Input preparation and
validation live here too, so both backends accept and reject exactly the same inputs.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

__all__ = [
    "ACTIVATIONS",
    "MixDownInputs",
    "gated_mix_down_reference",
    "mix_down_prepared",
    "prepare_inputs",
    "effective_mixing",
    "mix_down_reference",
]

ACTIVATIONS = ("relu", "gelu")


class MixDownInputs(NamedTuple):
    """Validated inputs of one side layer (see the module docstring for shapes)."""

    states: torch.Tensor
    previous: torch.Tensor | None
    mixing: torch.Tensor
    w_down: torch.Tensor
    b_down: torch.Tensor
    pattern: torch.Tensor | None


def prepare_inputs(
    states: torch.Tensor,
    previous: torch.Tensor | None,
    mixing: torch.Tensor,
    w_down: torch.Tensor,
    b_down: torch.Tensor,
    activation: str,
    pattern: torch.Tensor | None = None,
) -> MixDownInputs:
    """Autocast and validate the inputs.

    Under autocast the states, previous outputs and down-projection are cast to the autocast
    dtype, as `F.linear` would cast them, so fp32 parameters can meet fp16 cached states; the
    mixing matrix stays as it is (it is applied in fp32). Raises ValueError for an unknown
    activation, wrong ranks, mismatched M / T / N / W / r, dtypes or devices.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    if torch.is_autocast_enabled(states.device.type):
        dtype = torch.get_autocast_dtype(states.device.type)
        states, w_down, b_down = states.to(dtype), w_down.to(dtype), b_down.to(dtype)
        previous = previous.to(dtype) if previous is not None else None

    if states.dim() != 3 or min(states.shape[0], states.shape[2]) < 1:
        raise ValueError(f"states must be [M, N, W] with M, W >= 1, got shape {tuple(states.shape)}")
    num_modalities, rows, width = states.shape
    if w_down.dim() != 3 or w_down.shape[1] != width or min(w_down.shape[0], w_down.shape[2]) < 1:
        raise ValueError(
            f"w_down must be [T, W, r] with W = {width} (the [in, out] layout, i.e. "
            f"adapter down weights transposed), got {tuple(w_down.shape)}"
        )
    num_towers, _, rank = w_down.shape
    if b_down.shape != (num_towers, rank):
        raise ValueError(f"b_down must be [T, r] = [{num_towers}, {rank}] to match w_down, got {tuple(b_down.shape)}")
    if previous is not None and previous.shape != (num_towers, rows, width):
        raise ValueError(f"previous must be [T, N, W] = [{num_towers}, {rows}, {width}], got {tuple(previous.shape)}")
    sources = num_modalities + num_towers
    if mixing.shape != (num_towers, sources):
        raise ValueError(f"mixing must be [T, M + T] = [{num_towers}, {sources}], got {tuple(mixing.shape)}")
    if pattern is not None and (pattern.shape != mixing.shape or pattern.dtype != torch.bool):
        raise ValueError(
            f"pattern must be a bool tensor of the mixing shape {tuple(mixing.shape)}, "
            f"got {pattern.dtype} {tuple(pattern.shape)}"
        )
    if not states.is_floating_point() or not mixing.is_floating_point():
        raise ValueError(f"states and mixing must be floating point, got {states.dtype} and {mixing.dtype}")
    layer_tensors = [t for t in (states, previous, w_down, b_down) if t is not None]
    if len({t.dtype for t in layer_tensors}) != 1:
        raise ValueError(
            "states, previous, w_down and b_down must share one dtype, got "
            + ", ".join(str(t.dtype) for t in layer_tensors)
        )
    devices = {t.device for t in (*layer_tensors, mixing, *(() if pattern is None else (pattern,)))}
    if len(devices) != 1:
        raise ValueError(f"all inputs must be on one device, got {sorted(map(str, devices))}")
    return MixDownInputs(states, previous, mixing, w_down, b_down, pattern)


def effective_mixing(mixing: torch.Tensor, pattern: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """The mixing matrix in `dtype` with entries outside `pattern` set to zero (no gradient there)."""
    mixing = mixing.to(dtype)
    return mixing if pattern is None else mixing.masked_fill(~pattern, 0.0)


def gated_mix_down_reference(
    states: torch.Tensor,
    previous: torch.Tensor | None,
    mixing: torch.Tensor,
    w_down: torch.Tensor,
    b_down: torch.Tensor,
    activation: str = "relu",
    pattern: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference `(x [T, N, W], h [T, N, r])` in plain torch ops; autograd flows through it.

    `previous=None` stands for outputs that are all zero (the first side layer). The mix runs
    in at least fp32 (float64 stays float64, which gradcheck needs); x is rounded to the
    states' dtype before the down-projection, as the kernel does.
    """
    return mix_down_prepared(prepare_inputs(states, previous, mixing, w_down, b_down, activation, pattern), activation)


def mix_down_prepared(inputs: MixDownInputs, activation: str) -> tuple[torch.Tensor, torch.Tensor]:
    """`gated_mix_down_reference` on inputs `prepare_inputs` already checked (the dispatcher's CPU path)."""
    states, previous, mixing, w_down, b_down, pattern = inputs
    # The inputs are already in the autocast dtype; autocast must not recast the fp32 mix.
    with torch.autocast(states.device.type, enabled=False):
        return mix_down_reference(states, previous, mixing, w_down, b_down, activation, pattern)


def mix_down_reference(
    states: torch.Tensor,
    previous: torch.Tensor | None,
    mixing: torch.Tensor,
    w_down: torch.Tensor,
    b_down: torch.Tensor,
    activation: str,
    pattern: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's arithmetic on checked inputs, outside autocast; TorchScript compiles it
    (the scripted side network runs it)."""
    num_modalities, rows, width = states.shape
    num_towers = w_down.shape[0]
    compute_dtype = torch.promote_types(states.dtype, torch.float32)
    weights = effective_mixing(mixing, pattern, compute_dtype)
    x = weights[:, :num_modalities] @ states.reshape(num_modalities, rows * width).to(compute_dtype)
    if previous is not None:
        x = torch.addmm(x, weights[:, num_modalities:], previous.reshape(num_towers, rows * width).to(compute_dtype))
    x = x.view(num_towers, rows, width).to(states.dtype)
    pre = torch.baddbmm(b_down.unsqueeze(1), x, w_down)
    h = F.relu(pre) if activation == "relu" else F.gelu(pre)
    return x, h
