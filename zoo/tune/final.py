"""The final pick of a study whose trials validated on a sample of users (`--search-valid-users`).

A sample makes every epoch's validation cheaper, and is enough to steer TPE and the pruner, but
its NDCG@10 has a standard error: the trial best on the sample need not be best on the whole
split. So the `final_candidates` best complete trials (each with a run folder of its own) are
ranked again, on every validation user, from the best-epoch weights their run folders hold; the
recipe is the best of them there. The test split plays no part.

Each full-split score is stored in the study (user attribute `FULL_VALID_ATTR`, by trial
number): a finished trial's run folder never changes, so a rerun of the command, or another
worker writing the outputs, ranks no trial twice.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import TrialState

from crossan.zoo.core.errors import NoResultError, UserError
from crossan.zoo.tune.study import METRIC, StudySettings

__all__ = ["FULL_VALID_ATTR", "Candidate", "final_candidates", "full_validation_score", "pick_on_full_validation"]

FULL_VALID_ATTR = f"full valid {METRIC}"


@dataclass(frozen=True)
class Candidate:
    """A trial ranked again: its run folder, its score on the sample and on the whole split."""

    trial: int
    run_dir: str
    sampled: float
    full: float

    def to_dict(self) -> dict[str, Any]:
        """The candidate as the summary and the recipe's origin record it."""
        return {
            "trial": self.trial,
            "run_dir": self.run_dir,
            f"sampled valid {METRIC}": self.sampled,
            f"full valid {METRIC}": self.full,
        }


def final_candidates(study: optuna.Study, count: int) -> list[optuna.trial.FrozenTrial]:
    """The `count` best complete trials that trained a run folder of their own, best first (a
    trial that repeated another's values shares its run, and its score); ties go to the earlier."""
    trained = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if "repeats" not in t.user_attrs and "run_dir" in t.user_attrs and t.value is not None
    ]
    return sorted(trained, key=lambda t: (-float(t.value or 0.0), t.number))[:count]


def full_validation_score(run_dir: Path, device: torch.device | str = "cpu") -> float:
    """Validation NDCG@10 of the finished run in `run_dir` over every user, from its best-epoch
    weights, with the history masking and batch size it trained with."""
    from crossan.zoo.runs.run import open_run
    from crossan.zoo.training.evaluation import evaluate_model

    run = open_run(run_dir, device)
    train = run.config.get("train", {})
    result = evaluate_model(
        run.model,
        run.dataset,
        run.features,
        "valid",
        mask_history=bool(train.get("mask_history", True)),
        batch_size=int(train.get("eval_batch_size", 512)),
    )
    score = float(result.metrics[METRIC])
    del run, result
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return score


def pick_on_full_validation(
    study: optuna.Study, settings: StudySettings, device: torch.device | str = "cpu"
) -> tuple[optuna.trial.FrozenTrial, list[Candidate]]:
    """The trial best on the whole validation split among the `settings.final_candidates` best
    on the sample, and every candidate with both its scores (best on the sample first). A tie
    on the whole split goes to the candidate better on the sample."""
    trials = final_candidates(study, settings.final_candidates)
    if not trials:
        raise NoResultError(
            f"study {study.study_name!r} in {settings.shown_storage} has no complete trial with a run "
            "folder of its own: nothing to rank on the whole validation split"
        )
    known: dict[str, float] = dict(study.user_attrs.get(FULL_VALID_ATTR, {}))
    candidates = []
    for trial in trials:
        # The folder under this study's folder, wherever the process that trained it was started.
        run_dir = settings.study_dir / "trials" / Path(trial.user_attrs["run_dir"]).name
        if str(trial.number) not in known:
            try:
                known[str(trial.number)] = full_validation_score(run_dir, device)
            except UserError as error:
                raise type(error)(
                    f"trial {trial.number}, a final candidate, cannot be ranked on the whole validation split: {error}"
                ) from error
            study.set_user_attr(FULL_VALID_ATTR, known)
        candidates.append(Candidate(trial.number, str(run_dir), float(trial.value or 0.0), known[str(trial.number)]))
    picked = max(candidates, key=lambda candidate: candidate.full)  # the first of equals: better on the sample
    return next(t for t in trials if t.number == picked.trial), candidates
