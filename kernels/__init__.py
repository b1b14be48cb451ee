"""Fused kernels: one side layer's gated mix + adapter down-projection for all towers (Triton,
with a PyTorch reference).

The submodule `kernels.gated_mix_down` shares its name with the function exported here, so the
attribute `kernels.gated_mix_down` is the function; reach the module through
`importlib.import_module("kernels.gated_mix_down")`.
"""

from kernels.gated_mix_down import BACKENDS, gated_mix_down, triton_available
from kernels.reference import ACTIVATIONS, gated_mix_down_reference

__all__ = [
    "ACTIVATIONS",
    "BACKENDS",
    "gated_mix_down",
    "gated_mix_down_reference",
    "triton_available",
]
