"""What every recommender in the zoo provides: the contract training, evaluation, export and serving use.

The trainer, the evaluator, the exporter and the serving helper call only the methods below;
none of them looks inside a model or at its config class.

- Item side: `item_input_names` and `encode_items(*item_inputs) -> [N, D]`. The item inputs are
  whatever the item-feature store gathers for a set of catalogue rows: cached backbone states
  per modality for the side networks, the rows themselves for `sasrec-id`. Models that run
  their backbones inside the training step (full fine-tuning, Adapter, LoRA) fit the same
  contract: their config names stored token ids and pixels as item features
  (`RecommenderConfig.backbone_modalities`, `stored_features`), the store gathers those, and `encode_items` runs the
  backbones on them; nothing outside the model changes. A model implements `embed_items`;
  `encode_items` adds the normalisation that cosine scores (`score_temperature`) need.
- User side: `item_table` (embeddings with the padding row), `sequence_states` (the user
  encoder's state at every position of a left-padded window, what training predicts the next
  item from), `user_embeddings` (the state at the newest position) and `encode_users` (the same
  from gathered embeddings and a padding mask: the exported user encoder's signature).
- Scoring: `scores(user_embeddings, item_embeddings)` and `catalogue_embeddings(gather, n)`.
- Catalogue: `catalogue_state()` names the state with a row per item of the trained catalogue;
  a model with no learned entries there ranks a catalogue it never trained on.
- Frozen-similarity prior (`prior_weight`, side networks' `backbone_prior_weight`): the item
  embeddings carry the backbones' own frozen embeddings after the learned ones, and the user
  embeddings a decayed, unit-length pool of the history's after the user vector, so the score
  gains the frozen cosine between the two. The frozen part has no parameters to fit to the
  training items, so items never seen in training are scored on the same footing. The weight
  may differ between training and inference (`prior_inference_weight`): the learned part is
  trained as a residual over the prior at one weight and ranks with it at another.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from crossan.zoo.data.dataset import PAD
from crossan.zoo.layers.history import decayed_history
from crossan.zoo.layers.sasrec import SASRec
from crossan.zoo.layers.trained_items import TrainedItems
from crossan.zoo.models.config import RecommenderConfig

__all__ = ["PAD", "Recommender"]


class Recommender(nn.Module):
    """Item encoder (model specific) + SASRec user encoder; score = dot(user, item), or their
    cosine over a temperature (`score_temperature`)."""

    config: RecommenderConfig

    def __init__(self, config: RecommenderConfig) -> None:
        super().__init__()
        self.config = config
        self.user_encoder = SASRec(
            dim=config.embedding_dim,
            max_len=config.max_seq_len,
            num_blocks=config.num_blocks,
            num_heads=config.num_heads,
            ffn_dim=config.ffn_dim,
            dropout=config.dropout,
            attention_dropout=config.attention_dropout,
        )

    @property
    def item_input_names(self) -> tuple[str, ...]:
        """Names of the tensors `encode_items` takes, in order (also the ONNX input names)."""
        raise NotImplementedError

    def validation_choices(self) -> dict[str, tuple[Any, ...]]:
        """Config fields to choose after training, on the validation split at the best epoch, each
        with its candidate values: settings that change ranking but no trained weight (none here)."""
        return {}

    def apply_choice(self, name: str, value: Any) -> None:
        """Set config field `name` (from `validation_choices`) to one of its candidates, in place."""
        self.config = dataclasses.replace(self.config, **{name: value})

    def encode_items(self, *item_inputs: torch.Tensor) -> torch.Tensor:
        """Item embeddings `[N, D]`: `embed_items`, L2-normalised when the scores are cosines
        (`score_temperature > 0`), so that the exported item encoder and the user encoder's
        inputs are the embeddings that get scored."""
        embeddings = self.embed_items(*item_inputs)
        if self.config.score_temperature:
            embeddings = F.normalize(embeddings, dim=-1)
        if self.has_prior:
            embeddings = torch.cat([embeddings, self.prior_embeddings(*item_inputs)], dim=-1)
        return embeddings

    def embed_items(self, *item_inputs: torch.Tensor) -> torch.Tensor:
        """The model's own item embeddings `[N, D]`, before any normalisation."""
        raise NotImplementedError

    @property
    def prior_training_weight(self) -> float:
        """Weight of the frozen-similarity prior in the training scores (0: none)."""
        return 0.0

    @property
    def prior_inference_weight(self) -> float:
        """Weight of the prior in the scores outside training (evaluation, export, serving)."""
        return self.prior_training_weight

    @property
    def has_prior(self) -> bool:
        """Whether the model has a frozen-similarity prior, in training or at inference. Such a
        model appends its items' frozen unit embeddings (`prior_embeddings`) to the item
        embeddings and a weighted pooled history of them to the user embeddings, so that one
        inner product still gives the whole score (training, evaluation and the exported
        encoders alike)."""
        return bool(self.prior_training_weight or self.prior_inference_weight)

    @property
    def prior_weight(self) -> float:
        """The prior's weight in the current mode: `prior_training_weight` while training
        (`nn.Module.train()`), `prior_inference_weight` otherwise."""
        return self.prior_training_weight if self.training else self.prior_inference_weight

    @property
    def prior_decay(self) -> float:
        """Weight ratio of each older history item in the prior's pooled history."""
        return 1.0

    def prior_embeddings(self, *item_inputs: torch.Tensor) -> torch.Tensor:
        """Frozen item embeddings `[N, F]` the prior compares (models with a prior only): unit
        length, or a positive multiple of it for an item whose prior has its own weight."""
        raise NotImplementedError

    @property
    def item_embedding_width(self) -> int:
        """Width of `encode_items`' rows: D, plus the prior's frozen embeddings when it has one."""
        return self.config.embedding_dim + (self.prior_width if self.has_prior else 0)

    @property
    def prior_width(self) -> int:
        """F, the width of `prior_embeddings` (0 without a prior)."""
        return 0

    def random_item_inputs(self, num_items: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, ...]:
        """Inputs of `num_items` made-up items in `encode_items`' layout (benchmarks, export examples)."""
        raise NotImplementedError

    def encode_users(self, item_embeddings: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
        """User embeddings `[B, D]` from `item_embeddings [B, T, D]`, `padding_mask [B, T]` (True = pad);
        both are `item_embedding_width` wide (D + F) with a prior.

        Embeddings under the padding are ignored, whatever their values."""
        return self.user_states(item_embeddings, padding_mask)[:, -1]

    def user_states(self, item_embeddings: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
        """User-encoder states `[B, T, D]` at every position (unit length with cosine scores),
        followed, with a prior, by the unit pooled history of the frozen embeddings, weighted
        by `prior_weight` (the current mode's weight)."""
        dim = self.config.embedding_dim
        states = self.user_encoder(item_embeddings[..., :dim], padding_mask)
        if self.config.score_temperature:
            states = F.normalize(states, dim=-1)
        if not self.has_prior:
            return states
        # Each history item's frozen part back at unit length: an item's own prior weight (cold
        # items may have theirs, `prior_embeddings`) scales its score, not its share of the history.
        frozen = F.normalize(item_embeddings[..., dim:], dim=-1)
        history = decayed_history(frozen, padding_mask, self.prior_decay)
        return torch.cat([states, self.prior_weight * F.normalize(history, dim=-1)], dim=-1)

    def item_table(self, item_embeddings: torch.Tensor) -> torch.Tensor:
        """`[N + 1, D]`: a zero row for the padding index `PAD` = 0, then `item_embeddings [N, D]`,
        so that a window of 1-based item indices gathers its embeddings directly."""
        return torch.cat([item_embeddings.new_zeros(1, item_embeddings.shape[1]), item_embeddings])

    def sequence_states(self, item_table: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
        """User states `[B, T, D]` (see `user_states`) at every position of `window [B, T]` (indices into
        `item_table`, left-padded with `PAD`); position t sees the items up to t."""
        return self.user_states(item_table[window], window == PAD)

    def user_embeddings(self, item_table: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
        """User embeddings `[B, D]`: the state at the newest (last) position of `window [B, T]`."""
        return self.encode_users(item_table[window], window == PAD)

    def scores(self, user_embeddings: torch.Tensor, item_embeddings: torch.Tensor) -> torch.Tensor:
        """Scores `[B, N]` of every item (`item_embeddings` from `encode_items`) for every user:
        the dot product, or with `score_temperature` the cosine over the temperature. A user's
        ranking is the same either way, since the items are normalised already and the user's
        norm scales all its scores alike; the temperature shapes the training loss. With a prior
        the appended parts add their inner product (the weighted frozen cosine) before the
        temperature divides."""
        temperature = self.config.score_temperature
        if not temperature:
            return user_embeddings @ item_embeddings.t()
        dim = self.config.embedding_dim
        users = torch.cat([F.normalize(user_embeddings[:, :dim], dim=-1), user_embeddings[:, dim:]], dim=1)
        # In place: a full-ranking batch's scores are the largest tensor evaluation holds.
        return (users @ item_embeddings.t()).div_(temperature)

    @torch.no_grad()
    def catalogue_embeddings(
        self, gather: Callable[[torch.Tensor], tuple[torch.Tensor, ...]], num_items: int, batch_size: int = 2048
    ) -> torch.Tensor:
        """Embeddings `[num_items, D]` (float32) of catalogue rows 0..num_items-1, whose inputs
        `gather(rows)` returns, in batches of `batch_size` rows."""
        chunks = [
            self.encode_items(*gather(torch.arange(start, min(start + batch_size, num_items)))).float()
            for start in range(0, num_items, batch_size)
        ]
        return torch.cat(chunks)

    def adapter_parameters(self) -> list[nn.Parameter]:
        """Parameters that adapt the foundation models (their own optimiser group, `adapter_lr`);
        a model with adapters lists its own, the default has none."""
        return []

    def tower_representations(
        self, gather: Callable[[torch.Tensor], tuple[torch.Tensor, ...]], num_items: int, batch_size: int = 2048
    ) -> dict[str, torch.Tensor]:
        """Each modality tower's final representation of catalogue rows 0..num_items-1
        (`{tower: [num_items, W]}`), for analyses such as the mutual information between towers;
        empty for a model without towers."""
        return {}

    def gate_table(self) -> tuple[torch.Tensor, tuple[str, ...], tuple[str, ...]] | None:
        """Gate values `[L, T, S]` with tower and source names, for the gate heatmap; None for a
        model without gates."""
        return None

    def start_from_backbones(self, backbones: Mapping[str, Any]) -> None:
        """Copy the loaded backbones' weights (`crossan.zoo.backbones.Backbone` by modality) into a model
        that trains through them; models over cached states keep none."""

    def catalogue_state(self) -> dict[str, bool]:
        """The state entries with one row per item of the trained catalogue, each with whether it
        is learned (a trained vector per item, which another catalogue's items do not have) or a
        record of the training data (which items occur in training: none, for a catalogue the
        model never trained on). Found on the `TrainedItems` layers; a model that keeps per-item
        state elsewhere names it itself."""
        entries: dict[str, bool] = {}
        for prefix, module in self.named_modules():
            if isinstance(module, TrainedItems):
                learned = {name for name, _ in module.named_parameters()}
                entries |= {f"{prefix}.{name}": name in learned for name in module.state_dict()}
        return entries

    def mark_trained_items(self, seen: torch.Tensor) -> None:
        """Which catalogue rows occur in training (`seen [num_items]` bool), for a model that must
        treat the others as cold; the trainer calls it before the first step."""
