"""crossan model zoo: side networks over frozen multimodal backbones for sequential recommendation."""
from zoo.registry import build_model, create_model, list_models, load_model, preset_config

import zoo.models  # noqa: F401  (registers every model file's architecture and presets)

__all__ = ["build_model", "create_model", "list_models", "load_model", "preset_config"]
__version__ = "0.1.0"
