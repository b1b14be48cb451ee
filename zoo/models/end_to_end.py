"""Uncached baselines: the backbones themselves adapted, end to end, on every training step.

`fft-*` trains every backbone parameter, `adapter-*` inserts Houlsby adapters into every
backbone layer (backbone frozen), `lora-*` adds LoRA to the attention projections through
`peft` (backbone frozen). They are the paper's Table 3/4 baselines against which cached side
networks are measured: same SASRec user encoder, loss and protocol, but the item side runs
the backbones forward and backward from token ids and pixels at every step.

Item side: each modality's backbone -> its last layer's pooled state (CLS, or masked mean for
sentence encoders) -> a linear head `W -> D` per modality -> fusion (concat by default) -> the
item embedding. With no further argument, `create_model("fft-ti")` builds BERT-base and
ViT-base from their default configs (random weights, no download), without their poolers.

Trainable parameters at those widths (D = 64, two SASRec blocks with a 256-wide FFN),
with `P_bert` = 108,891,648 and `P_vit` = 85,798,656 (no poolers), `L` = 12 layers per backbone:

- heads + concat fusion + SASRec: 2 (768 D + D) + (2 D D + D) + 100,224 = 206,912;
- `fft-ti`: P_bert + P_vit + 206,912 = 194,897,216 (paper Table 4: 194,897,216);
- `adapter-ti` (r = 512): 2 L x 2 adapters x (2 x 768 r + r + 768) + 206,912 = 48 x 787,712 + 206,912
  = 38,017,088 (paper: 38,017,088);
- `lora-ti` (r = 512 on query and value, their biases trained, peft's `bias="lora_only"`):
  2 L x 2 x (r (768 + 768) + 768) + 206,912 = 48 x 787,200 + 206,912 = 37,992,512 (paper: 37,992,512).
"""

from __future__ import annotations

import dataclasses
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.metadata import version
from typing import TYPE_CHECKING, Any, ClassVar, Self

import torch
from torch import nn

from crossan.zoo.core.errors import ConfigError
from crossan.zoo.layers.activations import ACTIVATIONS
from crossan.zoo.layers.adapter import HoulsbyAdapter
from crossan.zoo.layers.fusion import FUSIONS, make_fusion
from crossan.zoo.models.config import ContentConfig, StoredFeatures
from crossan.zoo.models.content import ContentRecommender
from crossan.zoo.models.registry import register_model

if TYPE_CHECKING:  # transformers loads when a backbone is built: importing the zoo stays quick
    from transformers import PretrainedConfig, PreTrainedModel

__all__ = [
    "METHODS",
    "SERVED_MODALITIES",
    "ADAPTER_SITES",
    "LORA_TARGETS",
    "EndToEndConfig",
    "EndToEnd",
    "insert_adapters",
    "backbone_inputs",
]

METHODS = ("full", "adapter", "lora")
SERVED_MODALITIES = ("text", "image")
"""Modalities an end-to-end model can train through: token ids and pixels."""
ADAPTER_SITES = {"bert": ("attention.output.dense", "output.dense"), "vit": ("attention.o_proj", "mlp.fc2")}
"""Where Houlsby adapters go in every layer, by backbone type: after the attention output
projection and after the feed-forward output projection, before their residual connections."""
LORA_TARGETS = {"bert": ("query", "value"), "vit": ("q_proj", "v_proj")}
"""The attention projections LoRA adapts, by backbone type."""
POOLINGS = ("cls", "mean")
ADDED_WEIGHT = re.compile(r"\.1\.(down|up)\.|lora_")
"""Names of the weights an adaptation adds (adapters, LoRA matrices): a backbone checkpoint lacks them."""


def _default_backbone(modality: str) -> dict[str, Any]:
    """The paper's backbone config for `modality` (BERT-base, ViT-base/16 at 224) as a plain dict:
    `BertConfig().to_dict()` or `ViTConfig().to_dict()`, written out so that building a config
    imports no transformers (tests/test_light_import.py checks them against transformers)."""
    head = {
        "transformers_version": version("transformers"),
        "architectures": None,
        "output_hidden_states": False,
        "return_dict": True,
        "dtype": None,
        "chunk_size_feed_forward": 0,
        "is_encoder_decoder": False,
        "id2label": {0: "LABEL_0", 1: "LABEL_1"},
        "label2id": {"LABEL_0": 0, "LABEL_1": 1},
        "problem_type": None,
    }
    if modality == "text":
        body = {
            "vocab_size": 30522,
            "hidden_size": 768,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "intermediate_size": 3072,
            "hidden_act": "gelu",
            "hidden_dropout_prob": 0.1,
            "attention_probs_dropout_prob": 0.1,
            "max_position_embeddings": 512,
            "type_vocab_size": 2,
            "initializer_range": 0.02,
            "layer_norm_eps": 1e-12,
            "pad_token_id": 0,
            "use_cache": True,
            "classifier_dropout": None,
            "is_decoder": False,
            "add_cross_attention": False,
            "bos_token_id": None,
            "eos_token_id": None,
            "tie_word_embeddings": True,
            "_name_or_path": "",
            "model_type": "bert",
        }
    else:
        body = {
            "hidden_size": 768,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "intermediate_size": 3072,
            "hidden_act": "gelu",
            "hidden_dropout_prob": 0.0,
            "attention_probs_dropout_prob": 0.0,
            "initializer_range": 0.02,
            "layer_norm_eps": 1e-12,
            "image_size": 224,
            "patch_size": 16,
            "num_channels": 3,
            "qkv_bias": True,
            "encoder_stride": 16,
            "pooler_output_size": 768,
            "pooler_act": "tanh",
            "_name_or_path": "",
            "model_type": "vit",
        }
    return {**head, **body, "output_attentions": False}


def backbone_inputs(modality: str) -> tuple[str, ...]:
    """The backbone's input names, in the order the model's item inputs list them."""
    return ("input_ids", "attention_mask") if modality == "text" else ("pixel_values",)


@dataclass(frozen=True)
class EndToEndConfig(ContentConfig):
    """Backbones adapted in the training step (`method`), then linear heads, fusion and SASRec."""

    architecture: ClassVar[str] = "end-to-end"
    stored_features: ClassVar[StoredFeatures] = StoredFeatures.INPUTS
    search_space: ClassVar[str] = "end-to-end.toml"
    modalities: tuple[str, ...] = field(default=SERVED_MODALITIES, metadata={"help": "text and/or image"})
    method: str = field(default="full", metadata={"help": "full (every weight), adapter or lora"})
    backbones: tuple[dict[str, Any], ...] = field(
        default=(), metadata={"help": "transformers config of each modality's backbone; empty = BERT-base and ViT-base"}
    )
    poolings: tuple[str, ...] = field(default=(), metadata={"help": "cls or mean per modality; empty = cls"})
    text_max_tokens: int = field(default=30, metadata={"help": "token ids per title (the stored inputs' width)"})
    adapter_dim: int = field(default=512, metadata={"help": "adapter hidden dimension r (method adapter)"})
    adapter_activation: str = field(default="relu", metadata={"help": "relu or gelu (method adapter)"})
    lora_rank: int = field(default=512, metadata={"help": "LoRA rank r (method lora)"})
    lora_alpha: float = field(default=512.0, metadata={"help": "LoRA scale numerator: updates scaled by alpha / r"})
    lora_dropout: float = field(default=0.0, metadata={"help": "dropout on the LoRA input (method lora)"})
    fusion: str = field(default="concat", metadata={"help": "momef, concat, static-gated, dynamic-gated"})
    top_k: int = field(default=2, metadata={"help": "modalities MOMEF keeps per item"})
    activation_checkpointing: bool = field(
        default=False, metadata={"help": "recompute backbone activations in the backward pass (torch.utils.checkpoint)"}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if (
            not self.modalities
            or len(set(self.modalities)) != len(self.modalities)
            or any(m not in SERVED_MODALITIES for m in self.modalities)
        ):
            raise ConfigError(f"modalities must be distinct names from {SERVED_MODALITIES}, got {self.modalities}")
        if self.method not in METHODS:
            raise ConfigError(f"method must be one of {METHODS}, got {self.method!r}")
        if not self.backbones:
            object.__setattr__(self, "backbones", tuple(_default_backbone(m) for m in self.modalities))
        if not self.poolings:
            object.__setattr__(self, "poolings", ("cls",) * len(self.modalities))
        if len(self.backbones) != len(self.modalities) or len(self.poolings) != len(self.modalities):
            raise ConfigError(
                f"{len(self.modalities)} modalities need as many backbones and poolings, got "
                f"{len(self.backbones)} and {len(self.poolings)}"
            )
        if any(p not in POOLINGS for p in self.poolings):
            raise ConfigError(f"poolings must be {POOLINGS}, got {self.poolings}")
        for name in ("text_max_tokens", "adapter_dim", "lora_rank"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.adapter_activation not in ACTIVATIONS:
            raise ConfigError(f"adapter_activation must be one of {ACTIVATIONS}, got {self.adapter_activation!r}")
        if self.fusion not in FUSIONS:
            raise ConfigError(f"fusion must be one of {FUSIONS}, got {self.fusion!r}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ConfigError(f"lora_dropout must lie in [0, 1), got {self.lora_dropout}")

    def backbone_config(self, index: int) -> PretrainedConfig:
        from transformers import AutoConfig

        values = dict(self.backbones[index])
        return AutoConfig.for_model(values.pop("model_type"), **values)

    def item_inputs(self) -> tuple[str, ...]:
        """Stored backbone inputs the model reads, `<modality>_<input>`, in input order."""
        return tuple(f"{m}_{name}" for m in self.modalities for name in backbone_inputs(m))

    def backbone_modalities(self) -> tuple[str, ...]:
        return tuple(self.modalities)

    def fit_to_data(self, num_items: int, feature_shapes: Mapping[str, tuple[int, ...]]) -> Self:
        """The catalogue size and the stored titles' width (the run's token limit) from the stored inputs."""
        fitted = super().fit_to_data(num_items, feature_shapes)
        if "text_input_ids" in feature_shapes:
            return dataclasses.replace(fitted, text_max_tokens=int(feature_shapes["text_input_ids"][0]))
        return fitted

    def fit_to_backbones(self, backbones: Mapping[str, Any]) -> Self:
        """This config with each modality's backbone config and pooling taken from the loaded
        backbones (`crossan.zoo.backbones.Backbone`, pretrained or tiny) the run trains from."""
        missing = [m for m in self.modalities if m not in backbones]
        if missing:
            raise ConfigError(f"no backbone for modalities {', '.join(missing)}")
        return dataclasses.replace(
            self,
            backbones=tuple(backbones[m].model.config.to_dict() for m in self.modalities),
            poolings=tuple(backbones[m].spec.pooling for m in self.modalities),
        )


def _backbone_type(backbone: PreTrainedModel) -> str:
    model_type = str(backbone.config.model_type)
    if model_type not in ADAPTER_SITES:
        raise ConfigError(f"adapters and LoRA know backbones of type {', '.join(ADAPTER_SITES)}, not {model_type!r}")
    return model_type


def insert_adapters(backbone: PreTrainedModel, adapter_dim: int, activation: str) -> list[HoulsbyAdapter]:
    """Put a Houlsby adapter after the attention output and the feed-forward output projection
    of every layer (`ADAPTER_SITES`) of a BERT or ViT backbone; returns the adapters. The
    projection moves to `<name>.0`, its adapter is `<name>.1`."""
    sites = ADAPTER_SITES[_backbone_type(backbone)]
    adapters = []
    for name, module in list(backbone.named_modules()):
        if isinstance(module, nn.Linear) and any(name.endswith(f".{site}") for site in sites):
            adapter = HoulsbyAdapter(module.out_features, adapter_dim, activation)
            parent_name, _, child = name.rpartition(".")
            setattr(backbone.get_submodule(parent_name), child, nn.Sequential(module, adapter))
            adapters.append(adapter)
    if not adapters:
        raise ConfigError(f"{type(backbone).__name__} has no {' / '.join(sites)} layers to adapt")
    return adapters


def _adapted_backbone(config: EndToEndConfig, index: int) -> nn.Module:
    """One modality's backbone, adapted as `config.method` says, with only its trainable part
    requiring gradients."""
    from transformers import AutoModel

    backbone: PreTrainedModel = AutoModel.from_config(config.backbone_config(index), add_pooling_layer=False)
    if config.activation_checkpointing:
        backbone.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    if config.method == "full":
        return backbone
    backbone.requires_grad_(False)
    if config.method == "adapter":
        insert_adapters(backbone, config.adapter_dim, config.adapter_activation)
        return backbone
    from peft import LoraConfig, get_peft_model

    # peft annotates lora_alpha as int but only divides by it (scaling = lora_alpha / r): the float
    # this config holds (saved run configs record e.g. 512.0) works as given, so it is not rounded.
    lora = LoraConfig(
        r=config.lora_rank,
        lora_alpha=config.lora_alpha,  # type: ignore[arg-type]  # peft: int, but any number works
        lora_dropout=config.lora_dropout,
        target_modules=list(LORA_TARGETS[_backbone_type(backbone)]),
        bias="lora_only",
    )
    with warnings.catch_warnings():
        # peft still asks transformers 5 for the renamed `is_gradient_checkpointing`.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(backbone, lora)


@register_model(
    EndToEndConfig,
    presets={
        "fft-ti": {"method": "full", "modalities": ("text", "image")},
        "fft-t": {"method": "full", "modalities": ("text",)},
        "adapter-ti": {"method": "adapter", "modalities": ("text", "image")},
        "adapter-t": {"method": "adapter", "modalities": ("text",)},
        "lora-ti": {"method": "lora", "modalities": ("text", "image")},
        "lora-t": {"method": "lora", "modalities": ("text",)},
    },
)
class EndToEnd(ContentRecommender):
    """Backbones (adapted per `config.method`) -> pooled last state -> linear head per modality ->
    fusion -> item embedding; SASRec over item embeddings, as every model of the zoo."""

    config: EndToEndConfig
    backbones: nn.ModuleList
    heads: nn.ModuleList

    def __init__(self, config: EndToEndConfig) -> None:
        super().__init__(config)
        self.backbones = nn.ModuleList(_adapted_backbone(config, i) for i in range(len(config.modalities)))
        widths = [int(config.backbone_config(i).hidden_size) for i in range(len(config.modalities))]
        self.heads = nn.ModuleList(nn.Linear(width, config.embedding_dim) for width in widths)
        self.fusion = make_fusion(config.fusion, len(config.modalities), config.embedding_dim, config.top_k)

    @property
    def content_input_names(self) -> tuple[str, ...]:
        return self.config.item_inputs()

    def start_from_backbones(self, backbones: Mapping[str, Any]) -> None:
        for modality in self.config.modalities:
            self.load_backbone_weights(modality, backbones[modality].model.state_dict())

    def load_backbone_weights(self, modality: str, weights: Mapping[str, torch.Tensor]) -> None:
        """Start `modality`'s backbone from a loaded (pretrained or tiny) backbone's state dict.

        The adaptation moved some weights: an adapted projection keeps its own as `<name>.0.*`
        (followed by its adapter), a LoRA layer as `<name>.base_layer.*`. The pooler, which this
        model does not use, is left out; only the added adapters and LoRA matrices start fresh.
        """
        backbone = self.backbones[self.config.modalities.index(modality)]
        target = backbone
        if self.config.method == "lora":  # a peft model around the backbone (`_adapted_backbone`)
            from peft import PeftModel

            if not isinstance(backbone, PeftModel):
                raise TypeError(f"a LoRA backbone must be a peft model, got {type(backbone).__name__}")
            target = backbone.get_base_model()
        own = target.state_dict()
        placed = {}
        for key, value in weights.items():
            if key.startswith("pooler."):
                continue
            prefix, _, leaf = key.rpartition(".")
            place = next((k for k in (key, f"{prefix}.0.{leaf}", f"{prefix}.base_layer.{leaf}") if k in own), None)
            if place is None:
                raise ConfigError(f"backbone weight {key!r} has no place in the {modality} backbone")
            placed[place] = value
        fresh = [k for k in own if k not in placed and not ADDED_WEIGHT.search(k)]
        if fresh:
            raise ConfigError(f"the loaded {modality} backbone lacks {', '.join(fresh[:5])}")
        target.load_state_dict(placed, strict=False)

    def adapter_parameters(self) -> list[nn.Parameter]:
        """The backbones' trainable parameters: every weight (full), the inserted adapters, or the
        LoRA matrices and biases. They take `adapter_lr`, the heads and SASRec `lr`, as the paper
        tunes the adaptation's learning rate on its own."""
        return [p for p in self.backbones.parameters() if p.requires_grad]

    def random_content_inputs(
        self, num_items: int, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, ...]:
        inputs: list[torch.Tensor] = []
        for index, modality in enumerate(self.config.modalities):
            config = self.config.backbone_config(index)
            if modality == "text":
                tokens = self.config.text_max_tokens
                inputs.append(torch.randint(1, int(config.vocab_size), (num_items, tokens), generator=generator))
                inputs.append(torch.ones(num_items, tokens, dtype=torch.long))
            else:
                size = int(config.image_size)
                inputs.append(torch.randn(num_items, int(config.num_channels), size, size, generator=generator))
        return tuple(inputs)

    def modality_states(self, *item_inputs: torch.Tensor) -> list[torch.Tensor]:
        """Each modality's pooled last-layer state `[N, W]`."""
        if len(item_inputs) != len(self.content_input_names):
            raise ValueError(
                f"expected {len(self.content_input_names)} inputs "
                f"({', '.join(self.content_input_names)}), got {len(item_inputs)}"
            )
        states, position = [], 0
        for backbone, modality, pooling in zip(
            self.backbones, self.config.modalities, self.config.poolings, strict=True
        ):
            names = backbone_inputs(modality)
            named = dict(zip(names, item_inputs[position : position + len(names)], strict=True))
            position += len(names)
            if "input_ids" in named:
                named["input_ids"] = named["input_ids"].long()
                named["attention_mask"] = named["attention_mask"].long()
            hidden = backbone(**named).last_hidden_state
            if pooling == "cls":
                states.append(hidden[:, 0])
            else:
                weights = named["attention_mask"][:, :, None].to(hidden.dtype)
                states.append((hidden * weights).sum(1) / weights.sum(1).clamp_min(1))
        return states

    def encode_content(self, *content_inputs: torch.Tensor) -> torch.Tensor:
        states = self.modality_states(*content_inputs)
        return self.fusion(torch.stack([head(s) for head, s in zip(self.heads, states, strict=True)], dim=1))
