"""crossan model zoo: side networks over frozen multimodal backbones for sequential recommendation.

The registry functions below load on first access (PEP 562), so that torch-free parts of the
package (the media readers in `zoo.data.media`, which the serving side uses to read new items'
content) import without PyTorch.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from zoo.registry import build_model, create_model, list_models, load_model, preset_config

__all__ = ["build_model", "create_model", "list_models", "load_model", "preset_config"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """Import the registry on first access to one of its functions and keep the function."""
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module("zoo.registry"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
