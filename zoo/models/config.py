"""Configuration bases shared by the model files: frozen dataclasses, JSON round-trippable.

Each model file defines its own config subclass next to its model."""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

from crossan.kernels.backends import BACKENDS
from crossan.zoo.core.errors import ConfigError
from crossan.zoo.core.field_types import check_field_types
from crossan.zoo.layers.activations import ACTIVATIONS
from crossan.zoo.layers.fusion import FUSIONS

__all__ = [
    "AUTO",
    "MODALITIES",
    "ContentConfig",
    "RecommenderConfig",
    "SideNetworkConfig",
    "StoredFeatures",
    "PAPER_BACKBONE_WIDTH",
    "PAPER_NUM_STATES",
]

AUTO = "auto"
"""The value of a setting chosen after training on the validation split."""
MODALITIES = ("text", "image", "video", "audio")
PAPER_BACKBONE_WIDTH = 768
PAPER_NUM_STATES = 7


class StoredFeatures(enum.Enum):
    """What the feature store keeps per item for each of a config's `backbone_modalities()`; the
    value is what a run's `config.json` records (`features.backbones.<modality>.stored`)."""

    STATES = "states"
    """The backbones' kept per-layer states, computed once and cached: the model runs no backbone."""
    INPUTS = "inputs"
    """The backbones' inputs (token ids, pixels): the model runs its backbones itself, in every step."""


@dataclass(frozen=True)
class RecommenderConfig:
    """Fields every recommender shares: the item-embedding size and the SASRec user encoder."""

    architecture: ClassVar[str] = ""
    stored_features: ClassVar[StoredFeatures] = StoredFeatures.STATES
    """What the feature store keeps per item of each modality in `backbone_modalities()`."""
    search_space: ClassVar[str] = ""
    """The file under `crossan/zoo/tune/spaces/` the tuner searches for this family's presets
    (a preset's own `<preset>.toml` there comes first); empty: the family ships none."""
    embedding_dim: int = field(default=64, metadata={"help": "item and user embedding size"})
    max_seq_len: int = field(default=10, metadata={"help": "items the user encoder sees"})
    num_blocks: int = field(default=2, metadata={"help": "SASRec transformer blocks"})
    num_heads: int = field(default=2, metadata={"help": "SASRec attention heads"})
    ffn_dim: int = field(default=256, metadata={"help": "SASRec feed-forward width"})
    dropout: float = field(default=0.1, metadata={"help": "SASRec hidden dropout"})
    attention_dropout: float = field(default=0.1, metadata={"help": "SASRec attention dropout"})
    score_temperature: float = field(
        default=0.0,
        metadata={
            "help": "0: score = dot(user, item) (the paper); > 0: item embeddings are L2-normalised and "
            "score = cosine(user, item) / temperature"
        },
    )

    def __post_init__(self) -> None:
        check_field_types(self)
        for name in ("embedding_dim", "max_seq_len", "num_blocks", "num_heads", "ffn_dim"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.embedding_dim % self.num_heads:
            raise ConfigError(f"embedding_dim {self.embedding_dim} is not divisible by num_heads {self.num_heads}")
        for name in ("dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"{name} must lie in [0, 1), got {getattr(self, name)}")
        if not self.score_temperature >= 0.0:
            raise ConfigError(f"score_temperature must be non-negative (0 = dot product), got {self.score_temperature}")

    def backbone_modalities(self) -> tuple[str, ...]:
        """Modalities whose backbone features (`stored_features`) the model reads, in input order
        (empty: none; the model reads only item rows)."""
        return ()

    @property
    def reads_item_rows(self) -> bool:
        """Whether `encode_items` also takes the items' catalogue rows (its last input)."""
        return False

    def fit_to_data(self, num_items: int, feature_shapes: Mapping[str, tuple[int, ...]]) -> Self:
        """This config fitted to a data set: its catalogue size and the shape after the item axis
        of each stored feature (`(num_states, width)` for cached states; stored backbone inputs
        have their own shapes). The base config needs neither."""
        return self

    def fit_to_backbones(self, backbones: Mapping[str, Any]) -> Self:
        """This config fitted to the loaded backbones (`crossan.zoo.backbones.Backbone` by modality) of a
        model that runs them itself; models over cached states need nothing from them."""
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form, tagged with the architecture name."""
        values = dataclasses.asdict(self)
        return {
            "architecture": self.architecture,
            **{k: list(v) if isinstance(v, tuple) else v for k, v in values.items()},
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Self:
        """Inverse of `to_dict`; unknown keys are an error rather than silently dropped."""
        values = {k: v for k, v in values.items() if k != "architecture"}
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ConfigError(f"unknown {cls.__name__} fields: {', '.join(unknown)}")
        # JSON values, lists back to tuples; `__post_init__` checks each against its field's type.
        fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        return cls(**fields)


@dataclass(frozen=True)
class ContentConfig(RecommenderConfig):
    """A model whose item embedding comes from the items' content, optionally plus a learned
    per-item ID vector (`crossan.zoo.layers.item_ids`)."""

    item_id_term: bool = field(
        default=False,
        metadata={"help": "add a learned ID vector per training item to the content embedding (zero for cold items)"},
    )
    item_id_dropout: float = field(
        default=0.0,
        metadata={
            "help": "dropout on the ID vectors in training (the ID term lets a content model memorise the "
            "training sequences; dropout slows that down as SASRec's embedding dropout does)"
        },
    )
    num_items: int = field(default=0, metadata={"help": "catalogue size (set from the data set)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.item_id_dropout < 1.0:
            raise ConfigError(f"item_id_dropout must lie in [0, 1), got {self.item_id_dropout}")
        if self.item_id_dropout and not self.item_id_term:
            raise ConfigError("item_id_dropout needs item_id_term=true")
        if self.num_items < 0:
            raise ConfigError(f"num_items must be non-negative, got {self.num_items}")

    @property
    def reads_item_rows(self) -> bool:
        return self.item_id_term

    def fit_to_data(self, num_items: int, feature_shapes: Mapping[str, tuple[int, ...]]) -> Self:
        return dataclasses.replace(self, num_items=num_items)


@dataclass(frozen=True)
class SideNetworkConfig(ContentConfig):
    """Side-adapter towers over cached backbone states, then fusion, then SASRec."""

    search_space: ClassVar[str] = "side-network.toml"
    modalities: tuple[str, ...] = field(default=MODALITIES, metadata={"help": "towers, in order"})
    backbone_widths: tuple[int, ...] = field(
        default=(), metadata={"help": "hidden width of each modality's backbone; empty = 768 for each"}
    )
    num_states: int = field(default=PAPER_NUM_STATES, metadata={"help": "kept backbone states = side layers"})
    side_width: int = field(
        default=0, metadata={"help": "tower width W; 0 = the common backbone width when all agree, else 768"}
    )
    adapter_dim: int = field(default=512, metadata={"help": "adapter hidden dimension r"})
    adapter_activation: str = field(default="relu", metadata={"help": "relu or gelu"})
    fusion: str = field(default="momef", metadata={"help": "momef, concat, static-gated, dynamic-gated"})
    top_k: int = field(default=2, metadata={"help": "modalities MOMEF keeps per item"})
    mixer_backend: str = field(default="auto", metadata={"help": "auto, triton or torch"})
    backbone_prior_weight: float = field(
        default=0.0,
        metadata={
            "help": "0: off (the paper); > 0: add weight x the cosine between a candidate's frozen backbone "
            "embedding and the user's decayed history of them to every score (needs score_temperature)"
        },
    )
    backbone_prior_inference_weight: float | str | None = field(
        default=None,
        metadata={
            "help": "weight of the prior outside training (validation, test, export, serving); "
            "None: backbone_prior_weight; 'auto': the value of backbone_prior_inference_grid with the best "
            "validation NDCG@10 at the best epoch (no retraining; the test split is never looked at). Lets "
            "the trained residual lean on the prior more when ranking"
        },
    )
    backbone_prior_inference_grid: tuple[float, ...] = field(
        default=(0.0, 0.25, 0.5, 1.0, 2.0, 4.0),
        metadata={"help": "the weights backbone_prior_inference_weight=auto compares on the validation split"},
    )
    backbone_prior_cold_scale: float | str | None = field(
        default=None,
        metadata={
            "help": "None: off; else the prior's weight outside training on items that never occur in a "
            "training prefix (and new items), as a multiple of its inference weight, or 'auto': the value of "
            "backbone_prior_cold_grid chosen on the validation split (validation_objective says how). The "
            "learned part has no evidence on such items and their frozen similarity does best there; the "
            "item encoder then also takes the catalogue rows"
        },
    )
    backbone_prior_cold_grid: tuple[float, ...] = field(
        # Fine near 1: the scale multiplies a cosine over the temperature, so a few percent move
        # a cold item past many others (on Amazon Scientific 1.5 already halves the warm users'
        # validation score).
        default=(1.0, 1.02, 1.05, 1.1, 1.2, 1.5, 2.0),
        metadata={"help": "the multiples backbone_prior_cold_scale=auto compares on the validation split"},
    )
    backbone_prior_decay: float = field(
        default=0.5,
        metadata={"help": "weight ratio of each older history item in the prior's pooled history, in (0, 1]"},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.modalities:
            raise ConfigError("at least one modality is required")
        unknown = [m for m in self.modalities if m not in MODALITIES]
        if unknown or len(set(self.modalities)) != len(self.modalities):
            raise ConfigError(f"modalities must be distinct names from {MODALITIES}, got {self.modalities}")
        if not self.backbone_widths:
            object.__setattr__(self, "backbone_widths", (PAPER_BACKBONE_WIDTH,) * len(self.modalities))
        if len(self.backbone_widths) != len(self.modalities):
            raise ConfigError(f"{len(self.modalities)} modalities but {len(self.backbone_widths)} backbone widths")
        if self.num_states < 1 or self.adapter_dim < 1 or self.side_width < 0:
            raise ConfigError("num_states and adapter_dim must be positive and side_width non-negative")
        if self.adapter_activation not in ACTIVATIONS:
            raise ConfigError(f"adapter_activation must be one of {ACTIVATIONS}, got {self.adapter_activation!r}")
        if self.fusion not in FUSIONS:
            raise ConfigError(f"fusion must be one of {FUSIONS}, got {self.fusion!r}")
        if self.mixer_backend not in BACKENDS:
            raise ConfigError(f"mixer_backend must be one of {BACKENDS}, got {self.mixer_backend!r}")
        if not self.backbone_prior_weight >= 0.0:
            raise ConfigError(f"backbone_prior_weight must be non-negative, got {self.backbone_prior_weight}")
        inference_weight = self.backbone_prior_inference_weight
        if isinstance(inference_weight, str) and inference_weight != AUTO:
            raise ConfigError(
                f"backbone_prior_inference_weight must be a number, null or {AUTO!r}, got {inference_weight!r}"
            )
        if isinstance(inference_weight, (int, float)) and not inference_weight >= 0.0:
            raise ConfigError(f"backbone_prior_inference_weight must be non-negative, got {inference_weight}")
        if not self.backbone_prior_inference_grid or min(self.backbone_prior_inference_grid) < 0.0:
            raise ConfigError(
                "backbone_prior_inference_grid must hold at least one weight, none negative, "
                f"got {self.backbone_prior_inference_grid}"
            )
        cold_scale = self.backbone_prior_cold_scale
        if isinstance(cold_scale, str) and cold_scale != AUTO:
            raise ConfigError(f"backbone_prior_cold_scale must be a number, null or {AUTO!r}, got {cold_scale!r}")
        # Positive: the user side recovers each history item's unit frozen embedding by its length.
        if isinstance(cold_scale, (int, float)) and not cold_scale > 0.0:
            raise ConfigError(f"backbone_prior_cold_scale must be positive, got {cold_scale}")
        if not self.backbone_prior_cold_grid or not min(self.backbone_prior_cold_grid) > 0.0:
            raise ConfigError(
                "backbone_prior_cold_grid must hold at least one multiple, all positive, "
                f"got {self.backbone_prior_cold_grid}"
            )
        if cold_scale is not None and not self.backbone_prior_weight and inference_weight is None:
            raise ConfigError(
                "backbone_prior_cold_scale scales the frozen-similarity prior, which is off: set "
                "backbone_prior_weight or backbone_prior_inference_weight"
            )
        if (self.backbone_prior_weight or inference_weight) and not self.score_temperature:
            name = "backbone_prior_weight" if self.backbone_prior_weight else "backbone_prior_inference_weight"
            raise ConfigError(
                f"{name} needs cosine scores (score_temperature > 0): the prior "
                "adds a cosine, which a dot product's scale would make arbitrary"
            )
        if not 0.0 < self.backbone_prior_decay <= 1.0:
            raise ConfigError(f"backbone_prior_decay must lie in (0, 1], got {self.backbone_prior_decay}")
        if self.fusion == "momef" and not 1 <= self.top_k <= self.num_towers:
            raise ConfigError(f"top_k must lie in 1..{self.num_towers} for {self.num_towers} towers, got {self.top_k}")

    @property
    def num_towers(self) -> int:
        return len(self.modalities)

    @property
    def reads_item_rows(self) -> bool:
        """The ID term and the cold items' prior scale both look items up by catalogue row."""
        return self.item_id_term or self.backbone_prior_cold_scale is not None

    def backbone_modalities(self) -> tuple[str, ...]:
        return tuple(self.modalities)

    def fit_to_data(self, num_items: int, feature_shapes: Mapping[str, tuple[int, ...]]) -> Self:
        """Backbone widths and the number of kept states from the feature cache (`(num_states, width)`
        per modality)."""
        missing = [m for m in self.modalities if m not in feature_shapes]
        if missing:
            raise ConfigError(f"no cached features for modalities {', '.join(missing)}")
        num_states = {feature_shapes[m][0] for m in self.modalities}
        if len(num_states) != 1:
            raise ConfigError(f"modalities keep different numbers of states: {dict(feature_shapes)}")
        return dataclasses.replace(
            super().fit_to_data(num_items, feature_shapes),
            backbone_widths=tuple(feature_shapes[m][1] for m in self.modalities),
            num_states=num_states.pop(),
        )

    @property
    def resolved_side_width(self) -> int:
        """W: explicit, else the backbones' common width, else 768 (BERT-base and ViT-base's width)."""
        if self.side_width:
            return self.side_width
        widths = set(self.backbone_widths)
        return widths.pop() if len(widths) == 1 else PAPER_BACKBONE_WIDTH
