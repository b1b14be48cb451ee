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

A study records, when it starts, what its trials are comparable under: the preset, the data
set (its kind and fingerprints of the catalogue and of the users' sequences), the search space,
the fixed values (the space's and `--set`), the feature settings and the pruner (a study
started before the pruner was recorded is not compared on it). Opened with any other, it
stops with one line naming what differs, since its finished trials would be kept and its best
trial chosen among results of another problem. A trial whose loss turns NaN (`DivergedError`)
is counted as pruned, with the reason recorded: an outcome of its values, not of the study.

A new study enqueues its warm starts (parameter values of other recipes) as its first trials.
The pruner is the median one, successive halving, or Hyperband over the trials' epochs.
"""

from __future__ import annotations

import dataclasses
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

from crossan.zoo.core.errors import ConfigError, DivergedError, UserError
from crossan.zoo.core.file_lock import file_lock
from crossan.zoo.data.dataset import SequenceDataset
from crossan.zoo.features.settings import FeatureSettings
from crossan.zoo.runs.pipeline import resume_run, train_and_save
from crossan.zoo.runs.settings import split_options
from crossan.zoo.training.trainer import TrainConfig, negatives_across_catalogues
from crossan.zoo.tune.space import SearchSpace

__all__ = [
    "FINISHED",
    "METRIC",
    "OPEN_LOCK",
    "StudySettings",
    "distinct_runs",
    "make_pruner",
    "open_study",
    "run_study",
    "study_data",
    "trial_run_dir",
]

METRIC = "NDCG@10"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
WAIT_SECONDS = 10  # how often a worker whose budget is in flight elsewhere looks again
PRUNERS = ("median", "halving", "hyperband")
OPEN_LOCK = ".open.lock"  # in the study folder: workers open (and create) the study one at a time
DATA_IDENTITY = ("kind", "fingerprint", "sequences")
"""What makes two data sets the same for a study: the kind and the content (catalogue and
sequences), not where the folder lies."""


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
    """What a study needs besides the data: the preset, its space, the budget and the storage.

    `overrides` (`--set`) fix config values for every trial, over the space's; they are checked
    with the space when the settings are made, so a bad one stops before any data is read.

    `warm_start` holds parameter values to try first (other catalogues' best recipes, say):
    a new study enqueues them, so they are its first trials and count towards the budget. Only
    the trial space's parameters are kept (a recipe holds fixed values too), and each value must
    lie in its parameter's range or choices; `warm_start_files` names where each came from, for
    the messages.

    `search_valid_users` > 0 validates every trial on a fixed sample of that many users
    (`valid_users`, fixed like an override); the `final_candidates` best complete trials are then
    ranked again on the whole validation split, and the recipe is the best of them there
    (`zoo.tune.final`)."""

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
    warm_start: tuple[dict[str, Any], ...] = ()
    warm_start_files: tuple[str, ...] = ()
    search_valid_users: int = 0
    final_candidates: int = 3

    def __post_init__(self) -> None:
        if self.trials < 1:
            raise ConfigError(f"--trials must be at least 1, got {self.trials}")
        if self.search_valid_users < 0:
            raise ConfigError(
                f"--search-valid-users must be 0 (validate on every user) or positive, got {self.search_valid_users}"
            )
        if self.final_candidates < 1:
            raise ConfigError(f"--final-candidates must be at least 1, got {self.final_candidates}")
        if self.search_valid_users and "valid_users" in dict(self.overrides):
            raise ConfigError(
                "--set valid_users and --search-valid-users both fix the validation sample; give one "
                "(--search-valid-users also ranks the best trials again on the whole split)"
            )
        if self.warm_start_files and len(self.warm_start_files) != len(self.warm_start):
            raise ConfigError(
                f"warm_start_files names {len(self.warm_start_files)} files for {len(self.warm_start)} warm starts"
            )
        if self.pruner not in PRUNERS:
            raise ConfigError(f"--pruner must be one of {', '.join(PRUNERS)}, got {self.pruner!r}")
        if self.heartbeat_seconds < 1:
            raise ConfigError(f"--heartbeat must be at least 1 second, got {self.heartbeat_seconds}")
        if self.timeout_minutes is not None and not self.timeout_minutes > 0:
            raise ConfigError(f"--timeout must be positive, got {self.timeout_minutes}")
        if self.study_dir.exists() and not self.study_dir.is_dir():
            raise ConfigError(f"--study {self.study_dir}: is a file; a study is a folder")
        if self.storage is not None:
            _check_storage_url(self.storage)
        if not self.trial_space.parameters:
            raise ConfigError(f"--set fixes every parameter of {self.space.path}: nothing is left to tune")
        if self.overrides:
            given = " ".join(f"{key}={json.dumps(value)}" for key, value in self.overrides)
            self.trial_space.check(self.preset, f"--set {given} (with the space {self.space.path})")
        _warm_start_params(self)  # checked now, before any data is read

    @property
    def fixed_values(self) -> dict[str, Any]:
        """What every trial fixes over the space's own values: `--set`, and `valid_users` when
        the search validates on a sample of users (so it is in the trials' values and the
        study's identity)."""
        values = dict(self.overrides)
        if self.search_valid_users:
            values["valid_users"] = self.search_valid_users
        return values

    @property
    def trial_space(self) -> SearchSpace:
        """The space the trials sample: the file's, with the `--set` values (and the validation
        sample of `search_valid_users`) fixed."""
        return self.space.fixing(self.fixed_values)

    @property
    def recipe_fixed(self) -> dict[str, Any]:
        """The fixed values a recipe records: the trials' own, less the validation sample of
        `search_valid_users` (how the search saved time, not part of the recipe)."""
        return self.space.fixing(dict(self.overrides)).fixed

    @property
    def trial_epochs(self) -> int:
        """The most epochs a trial trains (Hyperband's largest resource): the fixed `epochs`
        (the space's or `--set`'s), the top of its range or choices when it is tuned, else
        `TrainConfig`'s default."""
        space = self.trial_space
        if "epochs" in space.fixed:
            return int(space.fixed["epochs"])
        tuned = next((p for p in space.parameters if p.name == "epochs"), None)
        if tuned is not None:
            return int(max(tuned.corners()))
        return TrainConfig().epochs

    @property
    def warm_start_params(self) -> tuple[dict[str, Any], ...]:
        """The warm starts as the trial space's parameters (`_warm_start_params`)."""
        return _warm_start_params(self)

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{(self.study_dir / 'study.db').resolve()}"

    @property
    def shown_storage(self) -> str:
        """The storage URL with any password hidden, for messages and the study's outputs."""
        from sqlalchemy.engine import make_url

        return make_url(self.storage_url).render_as_string(hide_password=True)


def _warm_start_params(settings: StudySettings) -> tuple[dict[str, Any], ...]:
    """Each warm start's values of the trial space's parameters (the rest dropped: a recipe
    holds fixed values too), as the space's distributions hold them; a value outside its range
    or choices, or a warm start naming no parameter, is a `ConfigError` naming the file."""
    space = settings.trial_space
    kept = []
    for index, values in enumerate(settings.warm_start):
        source = settings.warm_start_files[index] if settings.warm_start_files else f"#{index + 1}"
        params = {}
        for parameter in space.parameters:
            if parameter.name not in values:
                continue
            value = parameter.admitted(values[parameter.name])
            if value is None:
                given = json.dumps(values[parameter.name], default=str)
                raise ConfigError(
                    f"--warm-start {source}: {parameter.name}={given} is outside "
                    f"the {parameter.domain()} of {parameter.name} in {space.path}"
                )
            params[parameter.name] = value
        if not params:
            names = ", ".join(p.name for p in space.parameters)
            raise ConfigError(
                f"--warm-start {source}: names none of the parameters the study samples ({names}) of {space.path}"
            )
        kept.append(params)
    return tuple(kept)


def _check_storage_url(url: str) -> None:
    """A `--storage` URL that SQLAlchemy parses and that names a database which outlives the
    process (an in-memory SQLite database would lose the study when the command ends)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError(
            f"--storage {url!r}: not a database URL (e.g. sqlite:///study.db, postgresql://user@host/db)"
        ) from None
    if parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:"):
        raise ConfigError(
            f"--storage {url}: an in-memory database, lost when the command ends; name a file (sqlite:///path/study.db)"
        )


def trial_run_dir(study_dir: Path, values: dict[str, Any]) -> Path:
    """The run folder of the trial with these config values (the same values, the same folder)."""
    key = hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:12]
    return study_dir / "trials" / f"trial-{key}"


def study_data(dataset: SequenceDataset, data_description: dict[str, Any]) -> dict[str, Any]:
    """What a study records about its data set: kind, name and root (roots, one per catalogue, of
    a data set over several) as `config.json` has them, the catalogue's fingerprint and one of the
    users' sequences (the catalogue's alone would take another set of users over the same items
    for the same data), and the counts."""
    return {
        "kind": data_description["kind"],
        "name": dataset.name,
        "root": data_description.get("root") or [each["root"] for each in data_description["catalogues"]],
        "fingerprint": data_description["fingerprint"],
        "sequences": data_description["sequences"],
        "users": dataset.num_users,
        "items": dataset.num_items,
    }


def _identity(settings: StudySettings, data: dict[str, Any], features: FeatureSettings) -> dict[str, Any]:
    """What a study must keep across runs, as JSON gives it back: preset, data set, search space,
    fixed values, how the item features are made (the cache folder aside) and the pruner (trials
    pruned by one rule and kept under another would make the budget mean two things)."""
    space = settings.trial_space.to_dict()
    feature_settings = {k: v for k, v in features.to_dict().items() if k != "cache_dir"}
    return json.loads(
        json.dumps(
            {
                "preset": settings.preset,
                "data set": {k: data.get(k) for k in DATA_IDENTITY},
                "search space": space["params"],
                "fixed values": space["fixed"],
                "feature settings": feature_settings,
                "pruner": settings.pruner,
            }
        )
    )


def _data_text(data: dict[str, Any]) -> str:
    return (
        f"{data.get('kind')} {data.get('name')!r} at {data.get('root')}, {data.get('users')} users, "
        f"fingerprint {data.get('fingerprint')}/{data.get('sequences')}"
    )


def _difference(key: str, recorded: Any, now: Any, recorded_data: dict[str, Any], data: dict[str, Any]) -> str:
    """`key` and how it differs, for the one-line refusal."""
    if key == "data set":
        return f"data set ({_data_text(recorded_data)} recorded; {_data_text(data)} now)"
    if isinstance(now, dict) and isinstance(recorded, dict):
        names = sorted(name for name in {*recorded, *now} if recorded.get(name) != now.get(name))
        shown = [
            f"{name}: {json.dumps(recorded.get(name))} recorded, {json.dumps(now.get(name))} now" for name in names
        ]
        return f"{key} ({'; '.join(shown)})"
    return f"{key} ({json.dumps(recorded)} recorded, {json.dumps(now)} now)"


def _missing_folders(folder: Path) -> list[Path]:
    """`folder` and those of its parents that do not exist yet, deepest first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def _open_storage(settings: StudySettings) -> RDBStorage:
    """The study's RDB storage, with heartbeats; a database that cannot be opened or a missing
    driver is one line."""
    from sqlalchemy.exc import SQLAlchemyError

    # Heartbeats and the retry callback are marked experimental; they are what makes a study resumable.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    which = (
        f"--storage {settings.shown_storage}" if settings.storage else f"the study database {settings.shown_storage}"
    )
    try:
        return RDBStorage(
            settings.storage_url,
            heartbeat_interval=settings.heartbeat_seconds,
            grace_period=2 * settings.heartbeat_seconds,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=2),
        )
    except ImportError as error:
        raise ConfigError(f"{which}: no database driver for it is installed ({error.__cause__ or error})") from None
    except SQLAlchemyError as error:
        detail = " ".join(str(getattr(error, "orig", None) or error).split())
        raise ConfigError(f"{which}: cannot open the database ({detail})") from None


def open_study(settings: StudySettings, data: dict[str, Any], features: FeatureSettings) -> optuna.Study:
    """Create the study, or load it if it exists. A study belongs to one preset, data set
    (`study_data`), search space, set of fixed values and feature settings: opened with any
    other, it stops with one line naming what differs. A study that cannot be opened leaves no
    folder this call made."""
    created = _missing_folders(settings.study_dir.resolve())
    lock = settings.study_dir / OPEN_LOCK
    try:
        try:
            settings.study_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ConfigError(f"--study {settings.study_dir}: cannot make the folder ({error.strerror})") from None
        # Workers started together would each create the new database's tables (SQLite says "table
        # ... already exists" to the second) and each record the study's identity: one at a time.
        with file_lock(lock):
            return _open_study(settings, data, features)
    except UserError:
        if created and lock.is_file():
            lock.unlink()
        for folder in created:  # deepest first
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        raise


def _open_study(settings: StudySettings, data: dict[str, Any], features: FeatureSettings) -> optuna.Study:
    """`open_study` less the folder, the lock and the clean-up: open the storage, create or load
    the study, and check (or, for a new study, record) what it belongs to."""
    storage = _open_storage(settings)
    startup = max(1, min(8, settings.trials // 3))  # random trials before TPE models the space
    pruner = make_pruner(settings.pruner, startup, settings.trial_epochs)
    study = optuna.create_study(
        study_name=settings.study_dir.name, storage=storage, load_if_exists=True, direction="maximize", pruner=pruner
    )
    stored = len(study.get_trials(deepcopy=False))
    seed = int(np.random.SeedSequence([settings.seed, stored]).generate_state(1)[0])
    study.sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup)
    identity, recorded = _identity(settings, data, features), study.user_attrs.get("identity")
    where = f"study {settings.study_dir.name!r} in {settings.shown_storage}"
    if recorded is None and stored:
        raise ConfigError(
            f"{where} records no data set, preset or search space (an older tuner started it); "
            "give another --study folder"
        )
    if recorded is None:
        study.set_user_attr("data", json.loads(json.dumps(data)))
        study.set_user_attr("identity", identity)
        # A new study only: a resumed one has run (or still holds) its warm starts.
        files = settings.warm_start_files or ("",) * len(settings.warm_start)
        for params, source in zip(settings.warm_start_params, files, strict=True):
            study.enqueue_trial(params, user_attrs={"warm_start": source} if source else None, skip_if_exists=True)
    elif differing_keys := [key for key in identity if key in recorded and recorded[key] != identity[key]]:
        # A key a study's identity lacks was not recorded by the tuner that started it: not compared.
        recorded_data = study.user_attrs.get("data", {})
        differing = [_difference(key, recorded[key], identity[key], recorded_data, data) for key in differing_keys]
        raise ConfigError(
            f"{where} was started with another {'; another '.join(differing)}; rerun it with "
            f"those settings, or give another --study folder"
        )
    return study


def make_pruner(kind: str, startup: int, epochs: int) -> optuna.pruners.BasePruner:
    """The pruner `kind` (one of `PRUNERS`): the median pruner after `startup` trials and from the
    third epoch on, successive halving from the second epoch, or Hyperband from the first epoch
    to `epochs` (the trials' epochs; Hyperband sizes its brackets from that range)."""
    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=startup, n_warmup_steps=2)
    if kind == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=2)
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=int(epochs), reduction_factor=3)
    raise ConfigError(f"--pruner must be one of {', '.join(PRUNERS)}, got {kind!r}")


@dataclass
class TrialObjective:
    """The Optuna objective of a study: sample a trial's values and train its run folder (or resume
    the one a killed process left, or take the result of a finished trial with the same values);
    its best validation NDCG@10, reported every epoch so that the pruner can stop it."""

    settings: StudySettings
    study: optuna.Study
    dataset: SequenceDataset
    data_description: dict[str, Any]
    features: FeatureSettings
    device: torch.device
    console: Console
    hide: _HideRunsInProgress

    def __call__(self, trial: optuna.Trial) -> float:
        values = self.settings.trial_space.sample(trial)
        run_dir = trial_run_dir(self.settings.study_dir, values)
        owner = _owner(self.study, run_dir, trial.number)
        if owner is not None:
            return self._repeat(trial, owner)
        trial.set_user_attr("run_dir", str(run_dir))
        warm = f" (warm start from {trial.user_attrs['warm_start']})" if "warm_start" in trial.user_attrs else ""
        self.console.print(f"trial {trial.number}{warm}: {json.dumps(values, sort_keys=True)} -> {run_dir}")
        try:
            metrics = self._train(values, run_dir, trial)
        except DivergedError as error:
            # A NaN loss is what some corners of a space give (a learning rate too high): an
            # outcome of the trial's values, counted as pruned, not a reason to stop the study.
            trial.set_user_attr("diverged", str(error))
            self.console.print(f"trial {trial.number} diverged: {error}; counted as pruned")
            raise optuna.TrialPruned() from None
        score = metrics["valid"][METRIC]
        self.console.print(f"trial {trial.number}: valid {METRIC} {score:.4f} (best epoch {metrics['best_epoch']})")
        return score

    def _repeat(self, trial: optuna.Trial, owner: optuna.trial.FrozenTrial) -> float:
        """The result of `owner`, whose values `trial` repeats; `RunInProgress` while another process trains it."""
        if owner.state == TrialState.RUNNING:
            self.hide.hide(trial.number)
            self.console.print(
                f"trial {trial.number} repeats trial {owner.number}, which another process is training: skipped"
            )
            raise RunInProgress(f"trial {trial.number} repeats running trial {owner.number}")
        trial.set_user_attr("repeats", owner.number)
        self.console.print(f"trial {trial.number} repeats trial {owner.number}: its result, without training")
        if owner.state == TrialState.PRUNED:
            raise optuna.TrialPruned()
        if owner.value is None:  # a complete trial always has its value; Optuna's type allows none
            raise RuntimeError(f"trial {owner.number} is {owner.state.name} without a value")
        return float(owner.value)

    def _train(self, values: dict[str, Any], run_dir: Path, trial: optuna.Trial) -> dict[str, Any]:
        """Train the trial's run folder, or resume the one a killed process left; its metrics.json."""
        quiet = Console(quiet=True)

        def report(epoch: int, score: float) -> None:
            trial.report(score, epoch)
            if trial.should_prune():
                self.console.print(f"trial {trial.number} pruned after epoch {epoch} (valid {METRIC} {score:.4f})")
                raise optuna.TrialPruned()

        if (run_dir / "config.json").is_file():
            self.console.print(f"trial {trial.number} resumes {run_dir}")
            try:
                return resume_run(run_dir, self.device, quiet, on_validation=report)[1]
            except ConfigError as error:
                raise ConfigError(
                    f"{error}; delete that folder to train the trial again from the start (finished trials are kept)"
                ) from error
        train_values, model_values = split_options(values)
        return train_and_save(
            self.settings.preset,
            self.dataset,
            self.data_description,
            self.features,
            TrainConfig(**train_values),
            model_values,
            run_dir,
            self.device,
            quiet,
            on_validation=report,
        )[1]


def _check_space_keeps_catalogues_apart(space: SearchSpace) -> None:
    """One line, before any trial, when the space can choose negatives drawn from every catalogue,
    which training on several catalogues refuses (`negatives_across_catalogues`)."""
    train_fixed = split_options(space.fixed)[0]
    choosable = [
        f"{parameter.name}={json.dumps(value)}"
        for parameter in space.parameters
        if parameter.name in {field.name for field in dataclasses.fields(TrainConfig)}
        for value in parameter.corners()
        if negatives_across_catalogues(TrainConfig(**{**train_fixed, parameter.name: value}))
    ]
    choosable += [
        f"{name}={json.dumps(space.fixed[name])}" for name in negatives_across_catalogues(TrainConfig(**train_fixed))
    ]
    if choosable:
        raise ConfigError(
            f"the search space ({space.path}) can choose {', '.join(choosable)}: negatives from every catalogue, "
            "which training on several catalogues refuses; fix such settings off with --set (0 or false)"
        )


def run_study(
    settings: StudySettings,
    dataset: SequenceDataset,
    data_description: dict[str, Any],
    features: FeatureSettings,
    device: torch.device,
    console: Console,
) -> optuna.Study:
    """Run trials until `settings.trials` have finished (complete or pruned), or the timeout.

    A trial in flight in another process takes a slot of the budget: with every slot taken, this
    process waits for those trials instead of starting one more, and runs the retry of one whose
    process died, so that several workers finish exactly the asked number of trials."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the trials' own lines say what happens
    hide = _HideRunsInProgress()
    handlers = logging.getLogger("optuna").handlers  # records of optuna's child loggers pass here
    for handler in handlers:
        handler.addFilter(hide)
    if dataset.parts:
        _check_space_keeps_catalogues_apart(settings.trial_space)
    study = open_study(settings, study_data(dataset, data_description), features)
    objective = TrialObjective(settings, study, dataset, data_description, features, device, console, hide)

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
                console.print(
                    f"{in_flight} trial(s) in flight in other processes take the rest of the budget: waiting for them"
                )
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
