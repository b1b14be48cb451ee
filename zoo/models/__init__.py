"""Model families of the zoo: one file per architecture (its config, its module, its presets),
and the registry's lookups.

Importing this package imports every module in its folder, so that each model file's
`@register_model` fills the registry; a new architecture needs no other file changed. The
lookups (`create_model`, `list_models`, ...) are re-exported from here, where every model is
registered.
"""

import importlib
import pkgutil

from crossan.zoo.models.config import MODALITIES, RecommenderConfig, SideNetworkConfig
from crossan.zoo.models.recommender import Recommender
from crossan.zoo.models.registry import (
    architectures,
    build_model,
    config_from_dict,
    create_model,
    list_models,
    load_model,
    preset_config,
)
from crossan.zoo.models.side_network import SideNetworkRecommender

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

from crossan.zoo.models.crossan import Crossan, CrossanConfig
from crossan.zoo.models.iisan import IISAN, IISANConfig
from crossan.zoo.models.sasrec_id import SASRecID, SASRecIDConfig

__all__ = [
    "MODALITIES",
    "IISAN",
    "Crossan",
    "CrossanConfig",
    "IISANConfig",
    "Recommender",
    "RecommenderConfig",
    "SASRecID",
    "SASRecIDConfig",
    "SideNetworkConfig",
    "SideNetworkRecommender",
    "architectures",
    "build_model",
    "config_from_dict",
    "create_model",
    "list_models",
    "load_model",
    "preset_config",
]
