"""Training loop: in-batch debiased CE, Adam with parameter groups, early stopping on NDCG@10."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch.utils.data import Dataset, DistributedSampler

from crossan.zoo.core.distributed import SINGLE, Processes
from crossan.zoo.core.errors import ConfigError, DivergedError
from crossan.zoo.core.field_types import check_field_types
from crossan.zoo.data.catalogues import catalogue_of_users
from crossan.zoo.data.dataset import SequenceDataset
from crossan.zoo.data.errors import DataError
from crossan.zoo.features.store import ItemFeatures
from crossan.zoo.models.recommender import Recommender
from crossan.zoo.training.checkpoint import CheckpointStore, TrainingState
from crossan.zoo.training.evaluation import EvaluationResult, catalogue_metrics, evaluate_model, evaluation_users
from crossan.zoo.training.metrics import per_user_metric
from crossan.zoo.training.negatives import ExtraNegatives, check_negative_options
from crossan.zoo.training.objective import InBatchObjective
from crossan.zoo.training.selection import pick_on_validation
from crossan.zoo.training.significance import cold_item_users

__all__ = [
    "PRECISIONS",
    "TrainConfig",
    "Trainer",
    "TrainingOutcome",
    "catalogue_batches",
    "epoch_batches",
    "local_batch_size",
    "negatives_across_catalogues",
    "resolve_precision",
    "training_windows",
]

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
    steps_per_epoch: int = field(
        default=0,
        metadata={
            "help": "steps between validations; 0 = one pass over every window, N = the first N batches of "
            "each epoch's shuffle (a fixed step budget when uncached models cannot afford a pass)"
        },
    )
    lr: float = field(default=1e-3, metadata={"help": "learning rate of non-adapter parameters"})
    adapter_lr: float = field(
        default=0.0,
        metadata={
            "help": "learning rate of what adapts the backbones (side adapters; inserted adapters, LoRA or the "
            "backbone weights of uncached models); 0 = same as lr"
        },
    )
    weight_decay: float = field(
        default=0.0,
        metadata={
            "help": "decoupled (AdamW) weight decay of weight matrices and embeddings; biases and norms never decay"
        },
    )
    patience: int = field(default=5, metadata={"help": "epochs without validation NDCG@10 gain before stopping"})
    seed: int = field(default=42, metadata={"help": "seed of initialisation, shuffling and dropout"})
    mask_history: bool = field(default=True, metadata={"help": "remove history items from the ranking"})
    sliding_windows: bool = field(
        default=False, metadata={"help": "also train on the earlier windows of histories longer than max_seq_len + 1"}
    )
    sampled_negatives: int = field(
        default=0, metadata={"help": "catalogue items drawn per step as extra negatives (mixed negative sampling)"}
    )
    negative_sampling: str = field(
        default="uniform",
        metadata={"help": "how sampled negatives are drawn: uniform or popularity (corrected in the loss either way)"},
    )
    memory_size: int = field(
        default=0,
        metadata={"help": "item embeddings of recent steps kept as extra (detached) negatives; 0 = no memory"},
    )
    memory_max_age: int = field(default=4, metadata={"help": "steps a memory entry stays usable"})
    full_softmax: bool = field(
        default=False,
        metadata={
            "help": "score every catalogue item in every step (no sampling; for ID models, RecBole's SASRec loss)"
        },
    )
    sampling_correction: float = field(
        default=1.0,
        metadata={
            "help": "strength a of the sampling correction, logits - a log q: 1 = the paper's debiased loss, "
            "0 = the plain in-batch softmax (which favours rare items)"
        },
    )
    eval_batch_size: int = field(
        default=512, metadata={"help": "users per evaluation batch (fewer when users x items would pass 2^26 scores)"}
    )
    valid_users: int = field(
        default=0,
        metadata={
            "help": "users ranked by each validation: a fixed random sample of this many, the same every epoch, "
            "with the metric's standard error printed; 0 = all users (the test split always ranks all)"
        },
    )
    precision: str = field(
        default="auto",
        metadata={
            "help": "auto (bf16 on CUDA devices that support it, else fp32), fp32, bf16 or fp16 (with loss scaling)"
        },
    )
    init_from: str = field(
        default="",
        metadata={
            "help": "a finished run whose weights start this one where names and shapes match (fine-tuning "
            "from a pretrained run; '' = from scratch)"
        },
    )

    def __post_init__(self) -> None:
        check_field_types(self)
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.epochs < 1 or self.batch_size < 1 or self.patience < 1 or self.eval_batch_size < 1:
            raise ConfigError("epochs, batch_size, patience and eval_batch_size must be positive")
        if self.valid_users < 0:
            raise ConfigError(f"valid_users must be 0 (all users) or positive, got {self.valid_users}")
        if self.steps_per_epoch < 0:
            raise ConfigError(f"steps_per_epoch must be 0 (a full pass) or positive, got {self.steps_per_epoch}")
        for name in ("lr", "adapter_lr"):
            value = getattr(self, name)
            if value < 0 or value > 1:
                raise ConfigError(f"{name} must lie in [0, 1], got {value}")
        if self.lr == 0:
            raise ConfigError("lr must be positive")
        if not 0 <= self.weight_decay < 1:
            raise ConfigError(f"weight_decay must lie in [0, 1), got {self.weight_decay}")
        check_negative_options(
            self.sampled_negatives,
            self.negative_sampling,
            self.memory_size,
            self.memory_max_age,
            self.full_softmax,
            self.sampling_correction,
        )


def _cold_mean(result: EvaluationResult, cold: torch.Tensor) -> float | None:
    """The selection metric's mean over the cold users of `result` (None without any)."""
    return float(per_user_metric(result.ranks[cold], SELECTION_METRIC).mean()) if bool(cold.any()) else None


def _all_and_cold(result: EvaluationResult, cold: torch.Tensor) -> str:
    cold_mean = _cold_mean(result, cold)
    return f"{result.metrics[SELECTION_METRIC]:.4f} / " + ("-" if cold_mean is None else f"{cold_mean:.4f}")


@dataclass
class TrainingOutcome:
    best_epoch: int
    valid: EvaluationResult
    test: EvaluationResult
    history: list[dict[str, Any]]
    best_state: dict[str, torch.Tensor]
    choices: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Settings chosen on validation after training (`Recommender.validation_choices`): the
    candidates' validation scores and the chosen value, by config field."""


def training_windows(dataset: SequenceDataset, length: int, sliding: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Training windows `[W, length]` (left-padded) and the user of each `[W]`.

    By default one window per user: the last `length` items of the training prefix, each of
    its first `length - 1` positions predicting the next item (SASRec's objective). With `sliding`,
    longer prefixes are cut into consecutive windows that overlap by one item, so that every
    item of the prefix but the first is a target exactly once. Users whose prefix has a
    single item have nothing to predict and are skipped.
    """
    starts, prefix_ends = dataset.offsets[:-1], dataset.history_ends("train")
    prefix_lengths = prefix_ends - starts
    step = length - 1 if sliding else None
    # Windows per user: the prefix's ends n, n - step, ... above 1 (only n without sliding).
    counts = np.where(prefix_lengths >= 2, -(-(prefix_lengths - 1) // step) if step else 1, 0)
    users = np.repeat(np.arange(dataset.num_users), counts)
    back = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)  # 0, 1, ... per user
    ends = prefix_ends[users] - back * (step or 0)
    return torch.from_numpy(dataset.windows(starts[users], ends, length)), torch.from_numpy(users)


def local_batch_size(batch_size: int, processes: Processes = SINGLE) -> int:
    """Windows per process and step: the global `batch_size` split evenly over the processes."""
    if batch_size % processes.world_size:
        raise ConfigError(
            f"batch_size {batch_size} must be a multiple of the number of processes "
            f"({processes.world_size}): each process takes batch_size / processes windows"
        )
    return batch_size // processes.world_size


def epoch_batches(
    num_windows: int, batch_size: int, epoch: int, seed: int, processes: Processes = SINGLE
) -> list[torch.Tensor]:
    """This process's window indices for each step of `epoch`.

    The epoch's order is `DistributedSampler`'s shuffle (a permutation drawn from `seed + epoch`,
    the same for any number of processes), dealt to the processes round-robin. With the local
    batch `batch_size / N`, step s of process r holds the positions of the global batch
    `order[s * batch_size:(s + 1) * batch_size]` that are congruent to r mod N, so together
    the processes train on exactly the batches one process would. The sampler's padding (it
    repeats windows to even out the shares) is dropped: the last global batch is the true
    remainder, and a process may get fewer windows, or none, in the last step.
    """
    local = local_batch_size(batch_size, processes)
    # A range is a map-style data set (it has __len__ and __getitem__), which is all the sampler reads.
    windows: Dataset[int] = range(num_windows)  # type: ignore[assignment]  # see the line above
    sampler: DistributedSampler[int] = DistributedSampler(
        windows, num_replicas=processes.world_size, rank=processes.rank, shuffle=True, seed=seed
    )
    sampler.set_epoch(epoch)
    owned = len(range(processes.rank, num_windows, processes.world_size))
    order = torch.tensor(list(sampler)[:owned], dtype=torch.long)
    return [order[step * local : (step + 1) * local] for step in range(-(-num_windows // batch_size))]


def catalogue_batches(
    window_catalogues: np.ndarray, batch_size: int, epoch: int, seed: int, processes: Processes = SINGLE
) -> list[torch.Tensor]:
    """This process's window indices for each step of `epoch` when the windows come from several
    catalogues (`window_catalogues [W]`: each window's catalogue): every global batch holds one
    catalogue's windows, so its in-batch negatives are items of the positives' catalogue.

    Each catalogue's windows are shuffled and cut into batches of `batch_size` (its last batch
    the remainder), and the batches of all catalogues are shuffled together, all drawn from
    `seed + epoch`; as in `epoch_batches`, process r takes the positions of each global batch
    that are congruent to r mod the number of processes."""
    local_batch_size(batch_size, processes)
    generator = torch.Generator().manual_seed(seed + epoch)
    catalogues = torch.from_numpy(np.asarray(window_catalogues))
    batches: list[torch.Tensor] = []
    for catalogue in torch.unique(catalogues).tolist():
        members = torch.nonzero(catalogues == catalogue).flatten()
        batches += torch.split(members[torch.randperm(len(members), generator=generator)], batch_size)
    order = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[index][processes.rank :: processes.world_size] for index in order]


def negatives_across_catalogues(config: TrainConfig) -> list[str]:
    """The settings of `config` that draw negatives outside the batch, from every catalogue."""
    return [
        name
        for name, value in (
            ("sampled_negatives", config.sampled_negatives),
            ("memory_size", config.memory_size),
            ("full_softmax", config.full_softmax),
        )
        if value
    ]


def check_trains_on_catalogues(model: Recommender, dataset: SequenceDataset, config: TrainConfig) -> None:
    """One line when `model` cannot train on `dataset`'s several catalogues at once: a learned
    vector per item (ID models, the ID term) or negatives drawn outside a batch, which would mix
    the catalogues."""
    if not dataset.parts:
        return
    learned = [name for name, is_learned in model.catalogue_state().items() if is_learned]
    if learned:
        raise ConfigError(
            f"training on several catalogues ({', '.join(part.label for part in dataset.parts)}) needs an item "
            f"tower that reads only content; this model learns a vector per item ({', '.join(learned)}): "
            "train it on one catalogue at a time"
        )
    mixing = negatives_across_catalogues(config)
    if mixing:
        raise ConfigError(
            f"training on several catalogues draws negatives within each batch's catalogue; {', '.join(mixing)} "
            "would draw them from every catalogue: leave it at 0 (off)"
        )


class Trainer:
    """Trains `model` on cached item features; evaluates every epoch on the validation split.

    With `processes` from `torchrun` (`crossan.zoo.core.distributed.launched`), each process takes
    its share of every batch, in-batch negatives span the global batch (`InBatchObjective`),
    gradients are averaged by DistributedDataParallel, evaluation is sharded by users, and only
    the main process prints and writes checkpoints.
    """

    def __init__(
        self,
        model: Recommender,
        dataset: SequenceDataset,
        features: ItemFeatures,
        config: TrainConfig,
        device: torch.device | str = "cpu",
        console: Console | None = None,
        processes: Processes = SINGLE,
        on_validation: Callable[[int, float], None] | None = None,
    ) -> None:
        """`on_validation(epoch, score)` hears each epoch's validation score (NDCG@10) after the
        epoch's checkpoint is written; an exception it raises stops training there (a tuner's
        pruning), leaving a run that resumes from that checkpoint."""
        check_trains_on_catalogues(model, dataset, config)
        self.model = model.to(device)
        self.on_validation = on_validation
        self.dataset = dataset
        self.features = features
        self.config = config
        self.device = torch.device(device)
        self.processes = processes
        local_batch_size(config.batch_size, processes)  # fail before any work
        self.console = (console or Console(stderr=True)) if processes.is_main else Console(quiet=True)
        self.windows, window_users = training_windows(dataset, model.config.max_seq_len + 1, config.sliding_windows)
        if len(self.windows) == 0:
            raise DataError(
                "no user has two items before their validation and test items (each user's "
                "last two are held out), so there is nothing to train on; a user needs at least "
                "4 interactions to be trained on",
                dataset.root,
            )
        # Only sliding windows put several windows of one user in a batch.
        self.window_users = window_users if config.sliding_windows else None
        self.window_catalogues = catalogue_of_users(dataset)[window_users.numpy()] if dataset.parts else None
        self.valid_sample = evaluation_users(dataset.num_users, config.valid_users)
        counts = torch.as_tensor(dataset.train_counts(), dtype=torch.float64)
        self.model.mark_trained_items(counts[1:] > 0)
        # Add-one smoothing keeps p(item) > 0 for items never seen in training.
        probability = (counts + 1) / (counts[1:] + 1).sum()
        self.negatives = ExtraNegatives(
            probability.float().to(self.device),
            config.sampled_negatives,
            config.negative_sampling,
            config.memory_size,
            config.memory_max_age,
            config.full_softmax,
            config.sampling_correction,
            processes,
        )
        self.objective = processes.wrap(InBatchObjective(self.model, features, self.negatives, processes))
        # AdamW with no decay is Adam, step for step.
        self.optimizer = torch.optim.AdamW(self.parameter_groups())
        self.precision = resolve_precision(config.precision, self.device)
        # Parameters and optimizer state stay fp32; autocast runs the model in half precision
        # (the fused kernel takes its half-precision paths on CUDA) and fp16 scales the loss.
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")

    def autocast(self) -> torch.autocast:
        """The mixed-precision context the model runs in (a disabled one for fp32)."""
        dtype = _AUTOCAST_DTYPES.get(self.precision)
        return torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None)

    def parameter_groups(self) -> list[dict[str, Any]]:
        """What adapts the backbones (`model.adapter_parameters`) and everything else, each with
        its own learning rate, and each split into what decays (matrices, embeddings) and what
        does not (biases and norm scales, the 1-d parameters)."""
        adapter_ids = {id(p) for p in self.model.adapter_parameters()}
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        groups = []
        for name, lr, members in (
            ("rest", self.config.lr, [p for p in trainable if id(p) not in adapter_ids]),
            ("adapters", self.config.adapter_lr or self.config.lr, [p for p in trainable if id(p) in adapter_ids]),
        ):
            for suffix, decay, params in (
                ("", self.config.weight_decay, [p for p in members if p.dim() > 1]),
                (" (no decay)", 0.0, [p for p in members if p.dim() <= 1]),
            ):
                if params:
                    groups.append({"name": name + suffix, "params": params, "lr": lr, "weight_decay": decay})
        return groups

    def loss(self, window: torch.Tensor, users: torch.Tensor | None = None) -> torch.Tensor:
        """The loss to back-propagate for this process's batch of windows `[b, L + 1]` (item
        indices, 0 = padding): in a single process, the batch's mean.

        `users [b]` names each window's user (default: all distinct), so that items from the
        user's other windows in the batch are not used as that user's negatives.
        """
        return self._objective(window, users)[0]

    def _objective(
        self, window: torch.Tensor, users: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The objective on this device: (loss to back-propagate, local loss sum, global rows)."""
        return self.objective(window.to(self.device), None if users is None else users.to(self.device))

    def _progress(self) -> Progress:
        return Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
        )

    def fit(self, checkpoints: CheckpointStore | None = None) -> TrainingOutcome:
        """Train with early stopping; return the best-validation model's valid and test results.

        With `checkpoints`, every finished epoch is checkpointed and training continues from
        the last checkpoint found there, so a killed run resumed this way (with as many
        processes) computes exactly what an uninterrupted one does (an epoch cut short is redone
        from its start). Runs with deterministic kernels (the CPU scatter-adds in
        embedding-gather backward are otherwise order-dependent), so the same seed gives the
        same metrics.
        """
        previous = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
        torch.use_deterministic_algorithms(True, warn_only=True)
        try:
            return self._fit(checkpoints)
        finally:
            torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])

    def _random_states(self) -> dict[str, torch.Tensor]:
        """Every random generator the next epoch draws from, of every process (dropout, on the
        CPU and CUDA); the data order needs none, being a function of the seed and the epoch."""
        mine = [torch.get_rng_state()]
        if torch.cuda.is_available():
            mine += list(torch.cuda.get_rng_state_all())
        states = {}
        for index, state in enumerate(mine):
            name = "torch" if index == 0 else f"cuda.{index - 1}"
            gathered = self.processes.gather_rows(state.to(self.processes.device).unsqueeze(0)).cpu()
            states.update({f"rng.rank{rank}.{name}": gathered[rank] for rank in range(self.processes.world_size)})
        return states

    def _restore_random_states(self, states: dict[str, torch.Tensor]) -> None:
        rank = self.processes.rank
        if f"rng.rank{rank}.torch" not in states:
            raise ConfigError(
                f"the checkpoint holds no random state for process {rank}: resume with as many "
                "processes as the run started with"
            )
        torch.set_rng_state(states[f"rng.rank{rank}.torch"])
        cuda = [
            states[f"rng.rank{rank}.cuda.{i}"]
            for i in range(sum(k.startswith(f"rng.rank{rank}.cuda.") for k in states))
        ]
        if cuda:
            torch.cuda.set_rng_state_all(cuda)

    def train_epoch(self, epoch: int) -> float:
        """One pass over this process's share of epoch `epoch`'s windows (the first
        `steps_per_epoch` batches if set), without validation; returns the mean (global) loss."""
        self.objective.train()
        self.negatives.start_epoch()
        batches = self._epoch_batches(epoch)
        total = 0.0
        with self._progress() as progress:
            task = progress.add_task(f"epoch {epoch}/{self.config.epochs}", total=len(batches), loss=0.0)
            for step, rows in enumerate(batches):
                users = None if self.window_users is None else self.window_users[rows]
                with self.autocast():
                    loss, local_sum, count = self._objective(self.windows[rows], users)
                step_loss = (self.processes.sum(local_sum) / count).item()
                if not math.isfinite(step_loss):
                    raise DivergedError(
                        f"the training loss is {step_loss} at epoch {epoch}, step {step + 1}: "
                        "the model diverged (try a lower lr) or its inputs hold NaN"
                    )
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
                total += step_loss
                progress.update(task, advance=1, loss=total / (step + 1))
        return total / len(batches)

    def _epoch_batches(self, epoch: int) -> list[torch.Tensor]:
        """This process's batches of `epoch`: all of them, or the first `steps_per_epoch`; each
        within one catalogue when there are several."""
        if self.window_catalogues is not None:
            batches = catalogue_batches(
                self.window_catalogues, self.config.batch_size, epoch, self.config.seed, self.processes
            )
        else:
            batches = epoch_batches(len(self.windows), self.config.batch_size, epoch, self.config.seed, self.processes)
        return batches[: self.config.steps_per_epoch] if self.config.steps_per_epoch else batches

    def _evaluate(self, split: str) -> EvaluationResult:
        """`split` ranked over every user, or over the validation sample (`valid_users`)."""
        users = self.valid_sample if split == "valid" else None
        with self.autocast():
            return evaluate_model(
                self.model,
                self.dataset,
                self.features,
                split,
                self.config.mask_history,
                self.config.eval_batch_size,
                self.processes,
                users,
            )

    def _fit(self, checkpoints: CheckpointStore | None) -> TrainingOutcome:
        num_batches = len(self._epoch_batches(1))
        state = TrainingState()
        best_state: dict[str, torch.Tensor] = {}
        best_valid: EvaluationResult | None = None
        saved = checkpoints.load() if checkpoints is not None else None
        if saved is not None:
            state, best_state = saved.state, saved.best_model
            self.model.load_state_dict(saved.model)
            self.optimizer.load_state_dict(saved.optimizer)
            self.scaler.load_state_dict(saved.scaler)
            self._restore_random_states(saved.rng)
            if state.best_valid is not None and saved.best_valid_ranks is not None:
                best_valid = EvaluationResult("valid", state.best_valid, saved.best_valid_ranks, self.valid_sample)
            self.console.print(f"resuming after epoch {state.epoch} (best epoch so far {state.best_epoch})")
        while not state.stopped:
            epoch = state.epoch + 1
            started = time.perf_counter()
            loss = self.train_epoch(epoch)
            train_seconds = time.perf_counter() - started
            self.console.print(f"validating epoch {epoch}")
            valid = self._evaluate("valid")
            score = valid.metrics[SELECTION_METRIC]
            improved = score > state.best_score
            state.epoch, state.step = epoch, state.step + num_batches
            state.history.append({"epoch": epoch, "loss": loss, "train_seconds": train_seconds, "valid": valid.metrics})
            uncertainty = ""
            if self.dataset.parts:
                per_catalogue = catalogue_metrics(self.dataset, valid.ranks, self.valid_sample)
                state.history[-1]["valid_catalogues"] = per_catalogue
                uncertainty += (
                    " (mean of "
                    + ", ".join(f"{label} {metrics[SELECTION_METRIC]:.4f}" for label, metrics in per_catalogue.items())
                    + ")"
                )
            if self.valid_sample is not None:
                error = valid.standard_error(SELECTION_METRIC)
                state.history[-1]["valid_standard_error"] = {SELECTION_METRIC: error}
                uncertainty += f" ± {error:.4f} ({len(self.valid_sample):,} users)"
            self.console.print(
                f"epoch {epoch:3d}  loss {loss:.4f}  valid {SELECTION_METRIC} "
                f"{score:.4f}{uncertainty}{'  *' if improved else ''}  ({train_seconds:.1f}s)"
            )
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
                random_states = self._random_states()  # every process takes part in gathering them
                if self.processes.is_main:
                    checkpoints.save(
                        state,
                        self.model.state_dict(),
                        None if best_valid is None else best_valid.ranks,
                        self.optimizer.state_dict(),
                        self.scaler.state_dict(),
                        random_states,
                    )
            if self.on_validation is not None and not state.stopped:
                self.on_validation(epoch, score)
        self.model.load_state_dict(best_state)
        if best_valid is None:  # no epoch scored above best_score's start: validation gave no number
            raise DivergedError(
                f"no epoch of {state.epoch} reached a validation {SELECTION_METRIC} above "
                f"{TrainingState.best_score}; nothing to keep"
            )
        best_valid, choices = self._choose_on_validation(best_valid)
        test = self._evaluate("test")
        return TrainingOutcome(state.best_epoch, best_valid, test, state.history, best_state, choices)

    def _choose_on_validation(self, best_valid: EvaluationResult) -> tuple[EvaluationResult, dict[str, dict[str, Any]]]:
        """Set each of the model's `validation_choices`, one after the other, to the candidate
        `pick_on_validation` picks at the best epoch (the mean to within its standard error,
        then the users whose validation item is cold); the test split plays no part. Returns the
        validation result under the chosen settings and, per setting, the scores and the choice."""
        choices: dict[str, dict[str, Any]] = {}
        cold = cold_item_users(self.dataset, "valid")
        if self.valid_sample is not None:
            cold = cold[torch.from_numpy(self.valid_sample)]
        for name, candidates in self.model.validation_choices().items():
            scored = []
            for value in candidates:
                self.model.apply_choice(name, value)
                scored.append((value, self._evaluate("valid")))
            index = pick_on_validation([result.ranks for _, result in scored], cold, SELECTION_METRIC)
            chosen, best_valid = scored[index]
            self.model.apply_choice(name, chosen)
            choices[name] = {
                "chosen": chosen,
                "metric": SELECTION_METRIC,
                "valid": [
                    {
                        "value": value,
                        SELECTION_METRIC: result.metrics[SELECTION_METRIC],
                        "standard_error": result.standard_error(SELECTION_METRIC),
                        f"cold users {SELECTION_METRIC}": _cold_mean(result, cold),
                    }
                    for value, result in scored
                ],
            }
            self.console.print(
                f"{name}: {chosen} (valid {SELECTION_METRIC}, all / cold users: "
                + ", ".join(f"{value}: {_all_and_cold(result, cold)}" for value, result in scored)
                + ")"
            )
        return best_valid, choices
