"""crossan: side networks over frozen multimodal backbones for sequential recommendation.

The package has three parts, each a folder at the top of the repository:

- `crossan.zoo`: models, layers, data, training, evaluation and the experiment tables;
- `crossan.kernels`: the fused Triton kernel of the side layer and its PyTorch reference;
- `crossan.export`: ONNX and TorchScript export, validation against PyTorch, and serving.

The short API below loads on first access (PEP 562): `import crossan` imports nothing heavy,
and a serving process that only touches `crossan.OnnxRecommender` never loads PyTorch.

    import crossan
    model = crossan.create_model("crossan-tiva", num_items=1000)
    recommender = crossan.OnnxRecommender("weights/<run>/export")
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from crossan.export.serve import OnnxRecommender
    from crossan.zoo.models import build_model, create_model, list_models, load_model, preset_config

__version__ = "0.1.0"

# Each short-API name and the module that defines it.
_SOURCES = {
    "build_model": "crossan.zoo.models",
    "create_model": "crossan.zoo.models",
    "list_models": "crossan.zoo.models",
    "load_model": "crossan.zoo.models",
    "preset_config": "crossan.zoo.models",
    "OnnxRecommender": "crossan.export.serve",
}

__all__ = ["OnnxRecommender", "build_model", "create_model", "list_models", "load_model", "preset_config"]


def __getattr__(name: str) -> Any:
    """Import the module that defines `name` on first access and keep the value."""
    if name not in _SOURCES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_SOURCES[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_SOURCES})
