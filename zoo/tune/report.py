"""A study's outputs: the best recipe, a Markdown report and the validation-against-trial plot.

Each file is written atomically (a temporary file renamed into place), the recipe last: a kill
while they are written leaves every file whole, and a rerun writes them all again."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
import torch
from optuna.trial import TrialState

from crossan.zoo.core.atomic import atomic_write
from crossan.zoo.core.errors import NoResultError
from crossan.zoo.tune.final import pick_on_full_validation
from crossan.zoo.tune.recipe import write_recipe
from crossan.zoo.tune.study import FINISHED, METRIC, StudySettings, distinct_runs

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["write_outputs"]


def write_outputs(study: optuna.Study, settings: StudySettings, device: torch.device | str = "cpu") -> dict[str, Any]:
    """Write `trials.png`, `report.md` and `best-recipe.json` into the study folder; return a summary.

    The recipe's origin records the study, the best trial, and what the study recorded when it
    was started: the data set, the preset, the search space and the feature settings.

    A study that validated on a sample of users (`settings.search_valid_users`) recommends the
    best of its `final_candidates` best trials on the whole validation split, ranked on `device`
    (`zoo.tune.final`); the summary's `final_pick` names it and `final_candidates` gives each
    candidate's scores on the sample and on the whole split. Otherwise the best is Optuna's."""
    trials = study.get_trials(deepcopy=False)
    if not any(t.state == TrialState.COMPLETE for t in trials):
        raise NoResultError(
            f"study {study.study_name!r} in {settings.shown_storage} has no complete trial "
            f"({_states(trials)}): nothing to recommend; rerun with more --trials or a longer "
            "--timeout"
        )
    best = study.best_trial
    final: dict[str, Any] = {}
    if settings.search_valid_users:
        optuna_best = best
        best, candidates = pick_on_full_validation(study, settings, device)
        final = {
            "search_valid_users": settings.search_valid_users,
            "optuna_best_trial": optuna_best.number,
            "final_pick": best.number,
            "final_candidates": [candidate.to_dict() for candidate in candidates],
        }
    space = settings.trial_space
    values = {**settings.recipe_fixed, **best.params}
    seconds = sum(
        (t.datetime_complete - t.datetime_start).total_seconds()
        for t in trials
        if t.datetime_complete is not None and t.datetime_start is not None
    )
    summary = {
        "study": study.study_name,
        "storage": settings.shown_storage,
        "preset": settings.preset,
        "space": str(space.path),
        "best_trial": best.number,
        # on the whole validation split: the trial's own score, or its final ranking's
        f"valid {METRIC}": _full_score(final, best),
        "finished_trials": sum(t.state in FINISHED for t in trials),
        "pruned_trials": sum(t.state == TrialState.PRUNED for t in trials),
        "trained_trials": distinct_runs(study),
        "trial_minutes": round(seconds / 60, 2),
        "run_dir": best.user_attrs.get("run_dir"),
        **final,
    }
    identity = study.user_attrs.get("identity", {})
    origin = {
        **summary,
        "data": study.user_attrs.get("data"),
        "space": space.to_dict(),
        "feature_settings": identity.get("feature settings"),
    }
    importances = _importances(study)
    _plot(trials, settings.study_dir / "trials.png", _plot_title(settings.preset, origin["data"]))
    markdown = _markdown(trials, best, summary, importances, values, origin["data"])
    atomic_write(settings.study_dir / "report.md", lambda temporary: Path(temporary).write_text(markdown))
    write_recipe(settings.study_dir / "best-recipe.json", settings.preset, values, origin)
    return {**summary, "importances": importances, "recipe": values}


def _full_score(final: dict[str, Any], best: optuna.trial.FrozenTrial) -> float | None:
    """The recommended trial's validation NDCG@10 over every user: from the final ranking when
    the trials validated on a sample, else the trial's value."""
    for candidate in final.get("final_candidates", []):
        if candidate["trial"] == best.number:
            return float(candidate[f"full valid {METRIC}"])
    return best.value


def _states(trials: list) -> str:
    """`3 pruned, 1 failed`: how the trials of a study ended (or `no trial`)."""
    counts: dict[str, int] = {}
    for trial in trials:
        counts[_state(trial)] = counts.get(_state(trial), 0) + 1
    return ", ".join(f"{count} {state}" for state, count in counts.items()) or "no trial"


def _state(trial: optuna.trial.FrozenTrial) -> str:
    """A trial's state in the report; a trial stopped by a NaN loss (pruned) says `diverged`."""
    return "diverged" if "diverged" in trial.user_attrs else trial.state.name.lower()


def _importances(study: optuna.Study) -> dict[str, float]:
    """Optuna's parameter importances (its default evaluator, PED-ANOVA) over the complete trials;
    empty below two."""
    if len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) < 2:
        return {}
    return {
        name: round(value, 4)
        for name, value in optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.PedAnovaImportanceEvaluator()
        ).items()
    }


def _markdown(
    trials: list,
    best: optuna.trial.FrozenTrial,
    summary: dict[str, Any],
    importances: dict[str, float],
    values: dict[str, Any],
    data: dict[str, Any] | None,
) -> str:
    names = sorted({name for t in trials for name in t.params})
    data = data or {}
    lines = [
        f"# Study {summary['study']} ({summary['preset']})",
        "",
        f"{summary['finished_trials']} finished trials ({summary['pruned_trials']} pruned), "
        f"{summary['trial_minutes']} minutes of trials; storage `{summary['storage']}`; "
        f"space `{summary['space']}`.",
        "",
        f"Data set: {data.get('kind')} `{data.get('name')}` at `{data.get('root')}` ({data.get('users')} users, "
        f"{data.get('items')} items; fingerprint {data.get('fingerprint')}, sequences {data.get('sequences')}).",
        "",
        *_best_lines(best, summary),
        "",
        "Recipe (`best-recipe.json`, for `python train.py --recipe`):",
        "",
        "```json",
        json.dumps(values, indent=1, sort_keys=True),
        "```",
        "",
        "## Parameter importances (Optuna's PED-ANOVA)",
        "",
    ]
    lines += (
        [f"- `{name}`: {value:.3f}" for name, value in importances.items()]
        if importances
        else ["(needs at least two complete trials)"]
    )
    lines += [
        "",
        "## Trials",
        "",
        "| trial | state | valid " + METRIC + " | epochs | " + " | ".join(names) + " |",
        "|---" * (4 + len(names)) + "|",
    ]
    for t in trials:
        value = "" if t.value is None else f"{t.value:.4f}"
        if t.state == TrialState.PRUNED and t.intermediate_values:
            value = f"({t.intermediate_values[max(t.intermediate_values)]:.4f})"
        cells = [str(t.number), _state(t), value, str(len(t.intermediate_values))]
        cells += [_cell(t.params.get(name)) for name in names]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _best_lines(best: optuna.trial.FrozenTrial, summary: dict[str, Any]) -> list[str]:
    """The report's lines on the recommended trial; with a final ranking, its table too."""
    score = summary[f"valid {METRIC}"]
    if "final_pick" not in summary:
        return [f"**Best trial {best.number}**: valid {METRIC} {score:.4f}, run `{summary['run_dir']}`."]
    candidates = summary["final_candidates"]
    lines = [
        f"**Picked trial {best.number}** on the whole validation split: valid {METRIC} {score:.4f}, "
        f"run `{summary['run_dir']}`. The trials validated on a sample of {summary['search_valid_users']} "
        f"users; the {len(candidates)} best there (Optuna's best: trial {summary['optuna_best_trial']}) were "
        "ranked again on every validation user:",
        "",
        f"| trial | sampled valid {METRIC} | full valid {METRIC} | picked |",
        "|---|---|---|---|",
    ]
    for candidate in candidates:
        picked = "yes" if candidate["trial"] == best.number else ""
        lines.append(
            f"| {candidate['trial']} | {candidate[f'sampled valid {METRIC}']:.4f} | "
            f"{candidate[f'full valid {METRIC}']:.4f} | {picked} |"
        )
    return lines


def _cell(value: Any) -> str:
    return "" if value is None else f"{value:.3g}" if isinstance(value, float) else str(value)


def _plot_title(preset: str, data: dict[str, Any] | None) -> str:
    """`crossan-t on amazon data set 'Scientific'`: the preset and the data set the study tuned it on."""
    if not data:
        return preset
    return f"{preset} on {data.get('kind')} data set {data.get('name')!r}"


def _plot(trials: list, path: Path, title: str) -> None:
    """Write the validation-against-trial plot of `trials` to `path` (a PNG)."""
    figure = _trials_figure(trials, title)  # selects the Agg backend before pyplot is imported here
    import matplotlib.pyplot as plt

    atomic_write(path, lambda temporary: figure.savefig(temporary, format="png", dpi=120))
    plt.close(figure)


def _trials_figure(trials: list, title: str) -> Figure:
    """Validation NDCG per trial (complete ones, the best so far, pruned ones at their last report),
    with the legend right of the axes so that it never hides a point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    figure, axes = plt.subplots(figsize=(9, 4), layout="constrained")
    complete = [(t.number, t.value) for t in trials if t.state == TrialState.COMPLETE]
    pruned = [
        (t.number, t.intermediate_values[max(t.intermediate_values)])
        for t in trials
        if t.state == TrialState.PRUNED and t.intermediate_values
    ]
    if complete:
        axes.scatter(*zip(*complete, strict=True), label="complete", color="tab:blue")
        best: list[float] = []
        numbers = sorted(complete)
        for _, value in numbers:
            best.append(max(value, best[-1]) if best else value)
        axes.step([n for n, _ in numbers], best, where="post", color="tab:blue", alpha=0.5, label="best so far")
    if pruned:
        axes.scatter(*zip(*pruned, strict=True), label="pruned (last epoch reported)", color="tab:gray", marker="x")
    axes.set_xlabel("trial")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # trials are whole numbers
    axes.set_ylabel(f"validation {METRIC}")
    axes.set_title(title)
    figure.legend(loc="outside right upper")
    return figure
