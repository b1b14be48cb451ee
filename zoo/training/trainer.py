"""Training loop: in-batch debiased CE, Adam with parameter groups, early stopping on NDCG@10."""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from zoo.data.dataset import PAD, SequenceDataset
from zoo.errors import ConfigError
from zoo.features import ItemFeatures
from zoo.models.base import Recommender
from zoo.training.checkpoint import CheckpointStore, TrainingState
from zoo.training.evaluation import EvaluationResult, evaluate_model, left_padded
from zoo.training.loss import in_batch_debiased_cross_entropy, same_user_mask

__all__ = ["PRECISIONS", "TrainConfig", "Trainer", "TrainingOutcome", "resolve_precision", "training_windows"]

SELECTION_METRIC = "NDCG@10"
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """`auto` -> bf16 on a CUDA device that supports it, fp32 otherwise; other names unchanged."""
    device = torch.device(device)
    if precision != "auto":
        return precision
    return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and selection settings (model settings live in the model config)."""

    epochs: int = field(default=30, metadata={"help": "maximum epochs"})
    batch_size: int = field(default=64, metadata={"help": "users per step"})
    lr: float = field(default=1e-3, metadata={"help": "learning rate of non-adapter parameters"})
    adapter_lr: float = field(default=0.0, metadata={"help": "adapter learning rate; 0 = same as lr"})
    patience: int = field(default=5, metadata={"help": "epochs without validation NDCG@10 gain before stopping"})
    seed: int = field(default=42, metadata={"help": "seed of initialisation, shuffling and dropout"})
    mask_history: bool = field(default=True, metadata={"help": "remove history items from the ranking"})
    sliding_windows: bool = field(default=False, metadata={
        "help": "also train on the earlier windows of histories longer than max_seq_len + 1"})
    eval_batch_size: int = field(default=512, metadata={"help": "users per evaluation batch"})
    precision: str = field(default="auto", metadata={
        "help": "auto (bf16 on CUDA devices that support it, else fp32), fp32, bf16 or fp16 (with loss scaling)"})

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.epochs < 1 or self.batch_size < 1 or self.patience < 1 or self.eval_batch_size < 1:
            raise ConfigError("epochs, batch_size, patience and eval_batch_size must be positive")
        for name in ("lr", "adapter_lr"):
            value = getattr(self, name)
            if value < 0 or value > 1:
                raise ConfigError(f"{name} must lie in [0, 1], got {value}")
        if self.lr == 0:
            raise ConfigError("lr must be positive")
        for name in ("mask_history", "sliding_windows"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")


@dataclass
class TrainingOutcome:
    best_epoch: int
    valid: EvaluationResult
    test: EvaluationResult
    history: list[dict[str, Any]]
    best_state: dict[str, torch.Tensor]


def training_windows(dataset: SequenceDataset, length: int,
                     sliding: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Training windows `[W, length]` (left-padded) and the user of each `[W]`.

    By default one window per user: the last `length` items of the training prefix, each of
    its first `length - 1` positions predicting the next item (DESIGN 2.4). With `sliding`,
    longer prefixes are cut into consecutive windows that overlap by one item, so that every
    item of the prefix but the first is a target exactly once. Users whose prefix has a
    single item have nothing to predict and are skipped.
    """
    pieces, users = [], []
    for user in range(dataset.num_users):
        prefix = dataset.history(user, "train")
        if sliding:
            ends = range(len(prefix), 1, -(length - 1))
        else:
            ends = [len(prefix)] if len(prefix) >= 2 else []
        for end in ends:
            pieces.append(prefix[max(0, end - length):end])
            users.append(user)
    return left_padded(pieces, length), torch.tensor(users, dtype=torch.long)


class Trainer:
    """Trains `model` on cached item features; evaluates every epoch on the validation split."""

    def __init__(self, model: Recommender, dataset: SequenceDataset, features: ItemFeatures, config: TrainConfig,
                 device: torch.device | str = "cpu", console: Console | None = None) -> None:
        self.model = model.to(device)
        self.dataset = dataset
        self.features = features
        self.config = config
        self.device = torch.device(device)
        self.console = console or Console(stderr=True)
        self.windows, window_users = training_windows(dataset, model.config.max_seq_len + 1, config.sliding_windows)
        # Only sliding windows put several windows of one user in a batch.
        self.window_users = window_users if config.sliding_windows else None
        counts = torch.as_tensor(dataset.train_counts(), dtype=torch.float64)
        # Add-one smoothing keeps p(item) > 0 for items never seen in training.
        probability = (counts + 1) / (counts[1:] + 1).sum()
        self.log_popularity = probability.log().float().to(self.device)
        self.optimizer = torch.optim.Adam(self.parameter_groups(), weight_decay=0.0)
        self.precision = resolve_precision(config.precision, self.device)
        # Parameters and optimizer state stay fp32; autocast runs the model in half precision
        # (the fused kernel takes its half-precision paths on CUDA) and fp16 scales the loss.
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")

    def autocast(self) -> torch.autocast:
        """The mixed-precision context the model runs in (a disabled one for fp32)."""
        dtype = _AUTOCAST_DTYPES.get(self.precision)
        return torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None)

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Adapters and everything else, each with its own learning rate."""
        adapter_ids = {id(p) for p in self.model.adapter_parameters()}
        adapters = [p for p in self.model.parameters() if id(p) in adapter_ids and p.requires_grad]
        rest = [p for p in self.model.parameters() if id(p) not in adapter_ids and p.requires_grad]
        groups = [{"name": "rest", "params": rest, "lr": self.config.lr}]
        if adapters:
            groups.append({"name": "adapters", "params": adapters, "lr": self.config.adapter_lr or self.config.lr})
        return groups

    def loss(self, window: torch.Tensor, users: torch.Tensor | None = None) -> torch.Tensor:
        """Loss of one batch of windows `[B, L + 1]` (item indices, 0 = padding).

        `users [B]` names each window's user (default: all distinct), so that items from the
        user's other windows in the batch are not used as that user's negatives.
        """
        window = window.to(self.device)
        candidates = torch.unique(window[window != PAD])
        item_embeddings = self.model.encode_items(*self.features.gather(candidates - 1))
        # Only the batch's items are encoded, so the window is re-indexed into their table:
        # item candidates[c] becomes c + 1, padding stays PAD.
        columns = torch.searchsorted(candidates, window) + 1
        columns = torch.where(window == PAD, torch.full_like(columns, PAD), columns)
        states = self.model.sequence_states(self.model.item_table(item_embeddings), columns[:, :-1])
        targets = window[:, 1:]
        valid = (window[:, :-1] != PAD) & (targets != PAD)
        row_user = valid.nonzero()[:, 0]
        masked = same_user_mask(window, candidates, row_user, targets[valid],
                                None if users is None else users.to(self.device))
        return in_batch_debiased_cross_entropy(self.model.scores(states[valid], item_embeddings),
                                               self.log_popularity[candidates], columns[:, 1:][valid] - 1, masked)

    def _progress(self) -> Progress:
        return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("loss {task.fields[loss]:.4f}"), TimeElapsedColumn(), TimeRemainingColumn(),
                        console=self.console, transient=True)

    def fit(self, checkpoints: CheckpointStore | None = None) -> TrainingOutcome:
        """Train with early stopping; return the best-validation model's valid and test results.

        With `checkpoints`, every finished epoch is checkpointed and training continues from
        the last checkpoint found there, so a killed run resumed this way computes exactly what
        an uninterrupted one does (an epoch cut short is redone from its start). Runs with
        deterministic kernels (the CPU scatter-adds in embedding-gather backward are otherwise
        order-dependent), so the same seed gives the same metrics.
        """
        previous = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
        torch.use_deterministic_algorithms(True, warn_only=True)
        try:
            return self._fit(checkpoints)
        finally:
            torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])

    def _random_states(self, order: torch.Generator) -> dict[str, torch.Tensor]:
        """Every random generator the next epoch draws from: data order, dropout (CPU and CUDA)."""
        states = {"rng.data_order": order.get_state(), "rng.torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            states.update({f"rng.cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
        return states

    @staticmethod
    def _restore_random_states(order: torch.Generator, states: dict[str, torch.Tensor]) -> None:
        order.set_state(states["rng.data_order"])
        torch.set_rng_state(states["rng.torch"])
        cuda = [states[f"rng.cuda.{i}"] for i in range(sum(k.startswith("rng.cuda.") for k in states))]
        if cuda:
            torch.cuda.set_rng_state_all(cuda)

    def _train_epoch(self, epoch: int, order: torch.Tensor, num_batches: int) -> float:
        """One pass over the windows in `order`; returns the mean loss."""
        self.model.train()
        total = 0.0
        with self._progress() as progress:
            task = progress.add_task(f"epoch {epoch}/{self.config.epochs}", total=num_batches, loss=0.0)
            for step in range(num_batches):
                rows = order[step * self.config.batch_size:(step + 1) * self.config.batch_size]
                users = None if self.window_users is None else self.window_users[rows]
                with self.autocast():
                    loss = self.loss(self.windows[rows], users)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"non-finite loss {loss.item()} at epoch {epoch}, step {step}")
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
                total += loss.item()
                progress.update(task, advance=1, loss=total / (step + 1))
        return total / num_batches

    def _fit(self, checkpoints: CheckpointStore | None) -> TrainingOutcome:
        generator = torch.Generator().manual_seed(self.config.seed)
        num_batches = -(-len(self.windows) // self.config.batch_size)
        state = TrainingState()
        best_state: dict[str, torch.Tensor] = {}
        best_valid: EvaluationResult | None = None
        saved = checkpoints.load() if checkpoints is not None else None
        if saved is not None:
            state, best_state = saved.state, saved.best_model
            self.model.load_state_dict(saved.model)
            self.optimizer.load_state_dict(saved.optimizer)
            self.scaler.load_state_dict(saved.scaler)
            self._restore_random_states(generator, saved.rng)
            if state.best_valid is not None:
                best_valid = EvaluationResult("valid", state.best_valid, saved.best_valid_ranks)
            self.console.print(f"resuming after epoch {state.epoch} (best epoch so far {state.best_epoch})")
        while not state.stopped:
            epoch = state.epoch + 1
            started = time.perf_counter()
            loss = self._train_epoch(epoch, torch.randperm(len(self.windows), generator=generator), num_batches)
            train_seconds = time.perf_counter() - started
            self.console.print(f"validating epoch {epoch}")
            with self.autocast():
                valid = evaluate_model(self.model, self.dataset, self.features, "valid", self.config.mask_history,
                                       self.config.eval_batch_size)
            score = valid.metrics[SELECTION_METRIC]
            improved = score > state.best_score
            state.epoch, state.step = epoch, state.step + num_batches
            state.history.append({"epoch": epoch, "loss": loss, "train_seconds": train_seconds,
                                  "valid": valid.metrics})
            self.console.print(f"epoch {epoch:3d}  loss {loss:.4f}  valid {SELECTION_METRIC} "
                               f"{score:.4f}{'  *' if improved else ''}  ({train_seconds:.1f}s)")
            if improved:
                state.best_score, state.best_epoch, state.stale, state.best_valid = score, epoch, 0, valid.metrics
                best_valid = valid
                best_state = copy.deepcopy({k: v.detach().cpu() for k, v in self.model.state_dict().items()})
            else:
                state.stale += 1
                if state.stale >= self.config.patience:
                    self.console.print(f"early stop: no {SELECTION_METRIC} gain for {state.stale} epochs")
            state.stopped = state.stale >= self.config.patience or epoch >= self.config.epochs
            if checkpoints is not None:
                checkpoints.save(state, self.model.state_dict(), best_valid.ranks, self.optimizer.state_dict(),
                                 self.scaler.state_dict(), self._random_states(generator))
        self.model.load_state_dict(best_state)
        with self.autocast():
            test = evaluate_model(self.model, self.dataset, self.features, "test", self.config.mask_history,
                                  self.config.eval_batch_size)
        return TrainingOutcome(state.best_epoch, best_valid, test, state.history, best_state)
