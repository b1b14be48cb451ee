"""Model families of the zoo: one file per architecture (its config, its module, its presets).

Importing this package imports every module in its folder, so that each model file's
`@register_model` runs; a new architecture needs no other file changed.
"""
import importlib
import pkgutil

from zoo.models.base import Recommender, SideNetworkRecommender
from zoo.models.config import MODALITIES, RecommenderConfig, SideNetworkConfig

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

from zoo.models.crossan import Crossan, CrossanConfig  # noqa: E402
from zoo.models.iisan import IISAN, IISANConfig  # noqa: E402
from zoo.models.sasrec_id import SASRecID, SASRecIDConfig  # noqa: E402

__all__ = ["MODALITIES", "IISAN", "Crossan", "CrossanConfig", "IISANConfig", "Recommender",
           "RecommenderConfig", "SASRecID", "SASRecIDConfig", "SideNetworkConfig", "SideNetworkRecommender"]
