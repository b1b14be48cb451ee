"""Which onnxruntime execution providers to ask for: CUDA when it can run here, then the CPU.

`onnxruntime-gpu` lists the CUDA provider on every machine, with or without a GPU; a session
asked for it on a machine without one logs an error and falls back to the CPU. So CUDA is
asked for only when onnxruntime offers it *and* the CUDA driver reports a device, checked
through the driver library itself (ctypes), so that the serving side stays free of PyTorch.
"""

from __future__ import annotations

import ctypes
import sys
from functools import cache

import onnxruntime as ort

__all__ = ["CPU", "CUDA", "cuda_device_count", "execution_providers", "exact_float32"]

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
_DRIVER_LIBRARY = "nvcuda.dll" if sys.platform == "win32" else "libcuda.so.1"


@cache
def cuda_device_count() -> int:
    """CUDA devices the driver sees; 0 without a driver (no NVIDIA GPU) or when it fails to start."""
    try:
        driver = ctypes.CDLL(_DRIVER_LIBRARY)
    except OSError:
        return 0
    count = ctypes.c_int(0)
    if driver.cuInit(0) != 0 or driver.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return count.value


def execution_providers() -> list[str]:
    """Providers to request, preferred first: CUDA where onnxruntime has it and a device exists, then CPU."""
    cuda = CUDA in ort.get_available_providers() and cuda_device_count() > 0
    return [CUDA, CPU] if cuda else [CPU]


def exact_float32(provider: str) -> tuple[str, dict[str, str]]:
    """`provider` with the options that keep float32 matmuls exact, for validation: the CUDA
    provider's TF32 matmuls would miss a 1e-4 float32 tolerance."""
    return provider, ({"use_tf32": "0"} if provider == CUDA else {})
