"""Names of an export's optimised and int8 graphs, and the providers that may run them.

`python -m crossan.export --optimize` writes `<graph>.opt.onnx` beside each `<graph>.onnx`, and
`--quantize int8` writes `<graph>.int8.onnx` (`crossan.export.variant_export`). Serving picks a
variant by name (`OnnxRecommender(dir, variant="int8")`); "float32" is the plain files. Both
variants are written for onnxruntime's CPU provider: the optimised graphs hold the CPU kernels'
fused operators, and dynamic int8 quantisation runs its integer matmuls on the CPU. Torch-free,
like the rest of serving.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from crossan.export.providers import CPU, execution_providers
from crossan.zoo.core.errors import ConfigError, MissingFileError

__all__ = [
    "FLOAT32",
    "OPTIMIZED",
    "INT8",
    "VARIANTS",
    "VARIANT_OPTIONS",
    "VARIANT_FILE",
    "check_variant",
    "variant_file",
    "require_variant",
    "variant_providers",
]

FLOAT32 = "float32"
OPTIMIZED = "opt"
INT8 = "int8"
VARIANT_OPTIONS = {OPTIMIZED: "--optimize", INT8: "--quantize int8"}
"""The export option that writes each variant."""
VARIANTS = (FLOAT32, *VARIANT_OPTIONS)
VARIANT_FILE = re.compile(r"(item_encoder|user_encoder|[a-z]+_backbone)\.(opt|int8)\.onnx")
"""Every variant file an export may write."""

Provider = str | tuple[str, dict[str, str]]


def check_variant(variant: object) -> str:
    """`variant` if it names one (`VARIANTS`); anything else raises `ConfigError`."""
    if not isinstance(variant, str) or variant not in VARIANTS:
        raise ConfigError(f"variant must be one of {', '.join(map(repr, VARIANTS))}, got {variant!r}")
    return variant


def variant_file(file_name: str, variant: str) -> str:
    """The file of graph file `file_name` in `variant`: `user_encoder.onnx` -> `user_encoder.int8.onnx`
    (the float32 variant is the file itself)."""
    check_variant(variant)
    if not file_name.endswith(".onnx"):
        raise ValueError(f"{file_name}: not an ONNX graph file")
    return file_name if variant == FLOAT32 else f"{file_name.removesuffix('.onnx')}.{variant}.onnx"


def require_variant(path: Path, variant: str) -> Path:
    """`path`, a variant file, if it is there; else a `MissingFileError` naming the option that writes it."""
    if variant != FLOAT32 and not path.is_file():
        raise MissingFileError(
            f"{path}: missing; the {variant} graphs are written by "
            f"`python -m crossan.export --run <run> {VARIANT_OPTIONS[variant]}`"
        )
    return path


def variant_providers(variant: str, providers: Sequence[Provider] | None) -> list[Provider]:
    """The providers a variant's sessions ask for: for float32 `providers` (default: CUDA where
    there is a device, then the CPU); for the CPU-only variants the CPU provider, and a request
    for any other provider raises `ConfigError` rather than splitting the graph between devices."""
    check_variant(variant)
    if variant == FLOAT32:
        return list(providers or execution_providers())
    requested = list(providers or [CPU])
    names = [p if isinstance(p, str) else p[0] for p in requested]
    others = [name for name in names if name != CPU]
    if others:
        raise ConfigError(
            f"the {variant} graphs are written for onnxruntime's {CPU}, not {', '.join(others)}; "
            f"serve them on the CPU or serve the float32 graphs"
        )
    return requested
