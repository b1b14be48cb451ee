"""One Optuna study per (preset, data set): TPE sampling, pruning on per-epoch validation NDCG@10.

Every trial is an ordinary run folder, `<study>/trials/trial-<hash of its values>`: it
checkpoints every epoch and resumes like any run. The study lives in an Optuna RDB storage
(SQLite in the study folder by default; any database URL Optuna accepts, so several machines
can share one study). Trials send heartbeats; a trial whose process died (SIGKILL, a lost
machine) is marked failed once its heartbeat is older than the grace period, and retried with
the same values, so the retry finds the killed run's folder and resumes it. Finished trials are
never retrained, and the study stops when the asked number of trials has finished (complete or
pruned), whichever process finishes them: a trial in flight in another process holds a slot of
the budget, so several workers never run more trials than asked.

The sampler's seed is drawn from the study's seed and the number of trials already stored, so a
resumed study (or a second worker joining later) proposes new values instead of replaying the
first process's draws. A proposal that repeats a finished trial's values takes that trial's
result without training (user attribute `repeats`; it counts as a trial, as in any Optuna study,
and tells the sampler the point is known). One that repeats a trial another process is training
is marked failed at once, so two processes never write one run folder.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback, fail_stale_trials
from optuna.trial import TrialState
from rich.console import Console

from crossan.zoo.cli import split_options
from crossan.zoo.data.dataset import SequenceDataset
from crossan.zoo.errors import ConfigError
from crossan.zoo.features.settings import FeatureSettings
from crossan.zoo.pipeline import resume_run, train_and_save
from crossan.zoo.training.trainer import TrainConfig
from crossan.zoo.tune.space import SearchSpace

__all__ = ["FINISHED", "METRIC", "StudySettings", "distinct_runs", "run_study", "trial_run_dir"]

METRIC = "NDCG@10"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
WAIT_SECONDS = 10  # how often a worker whose budget is in flight elsewhere looks again
PRUNERS = ("median", "halving")


class RunInProgress(Exception):
    """The sampler proposed the values of a trial that another process is training."""


class _HideRunsInProgress(logging.Filter):
    """Optuna logs a caught exception with its traceback and then the failed value; a trial that
    found its run in progress says so in its own line instead."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: set[str] = set()

    def hide(self, number: int) -> None:
        self.messages.add(f"Trial {number} failed with value None.")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], RunInProgress):
            return False
        return record.getMessage() not in self.messages


@dataclass(frozen=True)
class StudySettings:
    """What a study needs besides the data: the preset, its space, the budget and the storage."""

    preset: str
    space: SearchSpace
    trials: int
    study_dir: Path
    storage: str | None = None
    timeout_minutes: float | None = None
    pruner: str = "median"
    seed: int = 0
    heartbeat_seconds: int = 60
    overrides: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if self.trials < 1:
            raise ConfigError(f"--trials must be at least 1, got {self.trials}")
        if self.pruner not in PRUNERS:
            raise ConfigError(f"--pruner must be one of {', '.join(PRUNERS)}, got {self.pruner!r}")
        if self.heartbeat_seconds < 1:
            raise ConfigError(f"--heartbeat must be at least 1 second, got {self.heartbeat_seconds}")
        if self.timeout_minutes is not None and not self.timeout_minutes > 0:
            raise ConfigError(f"--timeout must be positive, got {self.timeout_minutes}")

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{(self.study_dir / 'study.db').resolve()}"


def trial_run_dir(study_dir: Path, values: dict[str, Any]) -> Path:
    """The run folder of the trial with these config values (the same values, the same folder)."""
    key = hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:12]
    return study_dir / "trials" / f"trial-{key}"


def open_study(settings: StudySettings, data_fingerprint: str) -> optuna.Study:
    """Create the study, or load it if it exists; one study belongs to one preset and data set."""
    settings.study_dir.mkdir(parents=True, exist_ok=True)
    # Heartbeats and the retry callback are marked experimental; they are what makes a study resumable.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    storage = RDBStorage(settings.storage_url, heartbeat_interval=settings.heartbeat_seconds,
                         grace_period=2 * settings.heartbeat_seconds,
                         heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=2))
    startup = max(1, min(8, settings.trials // 3))  # random trials before TPE models the space
    pruner: optuna.pruners.BasePruner = (
        optuna.pruners.MedianPruner(n_startup_trials=startup, n_warmup_steps=2) if settings.pruner == "median"
        else optuna.pruners.SuccessiveHalvingPruner(min_resource=2))
    study = optuna.create_study(study_name=settings.study_dir.name, storage=storage, load_if_exists=True,
                                direction="maximize", pruner=pruner)
    stored = len(study.get_trials(deepcopy=False))
    seed = int(np.random.SeedSequence([settings.seed, stored]).generate_state(1)[0])
    study.sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup)
    identity = {"preset": settings.preset, "data_fingerprint": data_fingerprint,
                "space": json.dumps([p.name for p in settings.space.parameters])}
    recorded = {key: study.user_attrs.get(key) for key in identity}
    if all(value is None for value in recorded.values()):
        for key, value in identity.items():
            study.set_user_attr(key, value)
    elif recorded != identity:
        differing = ", ".join(key for key in identity if recorded[key] != identity[key])
        raise ConfigError(f"study {settings.study_dir.name!r} in {settings.storage_url} was started with another "
                          f"{differing}; give another --study folder")
    return study


def run_study(settings: StudySettings, dataset: SequenceDataset, data_description: dict[str, Any],
              features: FeatureSettings, device: torch.device, console: Console) -> optuna.Study:
    """Run trials until `settings.trials` have finished (complete or pruned), or the timeout.

    A trial in flight in another process takes a slot of the budget: with every slot taken, this
    process waits for those trials instead of starting one more, and runs the retry of one whose
    process died, so that several workers finish exactly the asked number of trials."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the trials' own lines say what happens
    hide = _HideRunsInProgress()
    handlers = logging.getLogger("optuna").handlers  # records of optuna's child loggers pass here
    for handler in handlers:
        handler.addFilter(hide)
    study = open_study(settings, dataset.fingerprint())
    quiet = Console(quiet=True)

    def objective(trial: optuna.Trial) -> float:
        values = {**settings.space.sample(trial), **dict(settings.overrides)}
        run_dir = trial_run_dir(settings.study_dir, values)
        owner = _owner(study, run_dir, trial.number)
        if owner is not None and owner.state == TrialState.RUNNING:
            hide.hide(trial.number)
            console.print(f"trial {trial.number} repeats trial {owner.number}, which another process is training: "
                          f"skipped")
            raise RunInProgress(f"trial {trial.number} repeats running trial {owner.number}")
        if owner is not None:
            trial.set_user_attr("repeats", owner.number)
            console.print(f"trial {trial.number} repeats trial {owner.number}: its result, without training")
            if owner.state == TrialState.PRUNED:
                raise optuna.TrialPruned()
            return float(owner.value)
        trial.set_user_attr("run_dir", str(run_dir))
        console.print(f"trial {trial.number}: {json.dumps(values, sort_keys=True)} -> {run_dir}")

        def report(epoch: int, score: float) -> None:
            trial.report(score, epoch)
            if trial.should_prune():
                console.print(f"trial {trial.number} pruned after epoch {epoch} (valid {METRIC} {score:.4f})")
                raise optuna.TrialPruned()

        if (run_dir / "config.json").is_file():
            console.print(f"trial {trial.number} resumes {run_dir}")
            try:
                _, metrics, _ = resume_run(run_dir, device, quiet, on_validation=report)
            except ConfigError as error:
                raise ConfigError(f"{error}; delete that folder to train the trial again from the start "
                                  f"(finished trials are kept)") from error
        else:
            train_values, model_values = split_options(values)
            _, metrics, _ = train_and_save(settings.preset, dataset, data_description, features,
                                           TrainConfig(**train_values), model_values, run_dir, device, quiet,
                                           on_validation=report)
        score = metrics["valid"][METRIC]
        console.print(f"trial {trial.number}: valid {METRIC} {score:.4f} (best epoch {metrics['best_epoch']})")
        return score

    deadline = None if settings.timeout_minutes is None else time.monotonic() + 60 * settings.timeout_minutes
    said_waiting = False
    try:
        while deadline is None or time.monotonic() < deadline:
            fail_stale_trials(study)  # a dead worker's trial fails, and its retry waits for a worker
            finished = finished_trials(study)
            if finished >= settings.trials:
                break
            in_flight = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
            if finished + in_flight < settings.trials:
                study.optimize(objective, n_trials=1, catch=(RunInProgress,), gc_after_trial=True)
                said_waiting = False
                continue
            if not said_waiting:
                console.print(f"{in_flight} trial(s) in flight in other processes take the rest of the budget: "
                              "waiting for them")
                said_waiting = True
            time.sleep(min(WAIT_SECONDS, settings.heartbeat_seconds))
    finally:
        for handler in handlers:
            handler.removeFilter(hide)
    return study


def finished_trials(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def distinct_runs(study: optuna.Study) -> int:
    """How many finished trials trained a run of their own (the rest repeated another's values)."""
    return sum("repeats" not in t.user_attrs for t in study.get_trials(deepcopy=False, states=FINISHED))


def _owner(study: optuna.Study, run_dir: Path, number: int) -> optuna.trial.FrozenTrial | None:
    """The trial that finished or is training `run_dir`, if another than `number` (a retried
    trial's failed predecessor owns nothing: its retry resumes the folder; a repeat has no folder)."""
    for other in study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING)):
        if other.number != number and other.user_attrs.get("run_dir") == str(run_dir):
            return other
    return None
