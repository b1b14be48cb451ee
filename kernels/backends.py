"""The names of the side layer's kernel backends, apart from the kernel itself.

Configs and layers check a backend name when they are built; importing the kernel module for
that would load Triton (seconds, and a compiler) in every process that only builds a config,
lists the models or prints `--help`. The kernel is imported when a side network first runs it.
"""

from __future__ import annotations

__all__ = ["BACKENDS"]

BACKENDS = ("auto", "triton", "torch")
"""`auto`: Triton on CUDA when it is installed, else the PyTorch reference; `triton`, `torch`: that one."""
