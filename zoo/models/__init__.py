"""Model families of the zoo."""
from zoo.models.base import Recommender, SideNetworkRecommender
from zoo.models.config import (
    MODALITIES,
    CrossanConfig,
    IISANConfig,
    RecommenderConfig,
    SASRecIDConfig,
    SideNetworkConfig,
)
from zoo.models.crossan import Crossan
from zoo.models.iisan import IISAN
from zoo.models.sasrec_id import SASRecID

__all__ = ["MODALITIES", "IISAN", "Crossan", "CrossanConfig", "IISANConfig", "Recommender",
           "RecommenderConfig", "SASRecID", "SASRecIDConfig", "SideNetworkConfig", "SideNetworkRecommender"]
