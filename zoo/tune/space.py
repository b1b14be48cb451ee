"""Search spaces as data: one TOML file per model family, shipped in `spaces/`; each model config
class names its family's file (`search_space`).

    [fixed]                      # values every trial uses (config fields)
    epochs = 30

    [params.lr]                  # one table per tuned config field
    type = "float"               # float | int | categorical
    low = 1e-4
    high = 1e-2
    log = true

    [params.sliding_windows]
    type = "categorical"
    choices = [false, true]

Every name must be a model-config or training-config field of the preset, and every value of
the right type: both are checked when the space is loaded, so a typo is one line naming it.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import optuna

from crossan.zoo.core.errors import ConfigError, MissingFileError
from crossan.zoo.core.reading import read_text
from crossan.zoo.tune.recipe import check_recipe

__all__ = ["SPACES_DIR", "Parameter", "SearchSpace", "default_space", "load_space"]

SPACES_DIR = Path(__file__).with_name("spaces")
KINDS = ("float", "int", "categorical")


@dataclass(frozen=True)
class Parameter:
    """One tuned config field: a float or int range (optionally log-scaled) or a list of choices."""

    name: str
    kind: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: optuna.Trial) -> Any:
        if self.kind == "categorical":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.low is None or self.high is None:
            raise ConfigError(f"{self.name}: a {self.kind} range needs low and high")
        if self.kind == "float":
            return trial.suggest_float(self.name, self.low, self.high, log=self.log)
        return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)

    def admitted(self, value: Any) -> Any | None:
        """`value` as this parameter's distribution holds it (the matching choice; a float for a
        float range), or None when it lies outside the range or choices: a warm start's value
        must be one the space could have sampled, or TPE would model a point outside it."""
        if self.kind == "categorical":
            # A boolean never stands for a number (True == 1), nor a number for a boolean.
            return next(
                (c for c in self.choices if isinstance(c, bool) == isinstance(value, bool) and c == value), None
            )
        wanted = (int, float) if self.kind == "float" else int
        if isinstance(value, bool) or not isinstance(value, wanted) or self.low is None or self.high is None:
            return None
        if not self.low <= value <= self.high:  # NaN fails this too
            return None
        return float(value) if self.kind == "float" else value

    def domain(self) -> str:
        """The range or choices, as a message names them: `[0.0001, 0.01] (log)`, `one of 64, 128`."""
        if self.kind == "categorical":
            return "choices " + ", ".join(json.dumps(c) for c in self.choices)
        return f"{self.kind} range [{self.low}, {self.high}]{' (log)' if self.log else ''}"

    def corners(self) -> list[Any]:
        """The values a space check builds configs with: the range ends, or every choice."""
        return list(self.choices) if self.kind == "categorical" else [self.low, self.high]

    def to_dict(self) -> dict[str, Any]:
        """The parameter as its space file writes it (a study records it; a recipe names it)."""
        if self.kind == "categorical":
            return {"type": self.kind, "choices": list(self.choices)}
        return {"type": self.kind, "low": self.low, "high": self.high, "log": self.log}


@dataclass(frozen=True)
class SearchSpace:
    """The tuned parameters and the fixed values of one family, from `path`."""

    path: Path
    fixed: dict[str, Any]
    parameters: tuple[Parameter, ...]

    def sample(self, trial: optuna.Trial) -> dict[str, Any]:
        """A trial's config values: the fixed ones and one sample of each parameter."""
        return {**self.fixed, **{p.name: p.suggest(trial) for p in self.parameters}}

    def check(self, preset: str, where: str | Path | None = None) -> None:
        """Build the preset's configs at every parameter's corner values (others at their first);
        a failure names `where` (default: the space file)."""
        first = {p.name: p.corners()[0] for p in self.parameters}
        for parameter in self.parameters:
            for value in parameter.corners():
                check_recipe(preset, {**self.fixed, **first, parameter.name: value}, where or self.path)

    def fixing(self, values: dict[str, Any]) -> SearchSpace:
        """This space with `values` fixed (`--set`): a tuned field among them is no longer sampled,
        so no trial records a value it did not train with."""
        return replace(
            self, fixed={**self.fixed, **values}, parameters=tuple(p for p in self.parameters if p.name not in values)
        )

    def to_dict(self) -> dict[str, Any]:
        """The file, the fixed values and every parameter: what a study and its recipe record."""
        return {
            "file": str(self.path),
            "fixed": dict(self.fixed),
            "params": {p.name: p.to_dict() for p in self.parameters},
        }


def default_space(preset: str) -> Path:
    """The shipped space for `preset`: `spaces/<preset>.toml` if there is one, else the one its
    config class names (`search_space`); a family that names none is a `ConfigError`."""
    from crossan.zoo.models import preset_config

    own = SPACES_DIR / f"{preset}.toml"
    if own.is_file():
        return own
    config = preset_config(preset)
    if not config.search_space:
        raise ConfigError(f"{preset}: {type(config).__name__} ships no search space; give one with --space")
    return SPACES_DIR / config.search_space


def load_space(path: Path, preset: str) -> SearchSpace:
    """Read and check a space file for `preset`; every fault is one line naming the file."""
    data = _read_toml(Path(path), "search space")
    unknown = sorted(set(data) - {"fixed", "params"})
    if unknown:
        raise ConfigError(f"{path}: unknown table(s) {', '.join(unknown)}; a space has [fixed] and [params.NAME]")
    fixed, params = data.get("fixed", {}), data.get("params", {})
    if not isinstance(fixed, dict) or not isinstance(params, dict):
        raise ConfigError(f"{path}: fixed and params must be tables ([fixed], [params.NAME])")
    parameters = tuple(_parameter(path, name, spec) for name, spec in params.items())
    if not parameters:
        raise ConfigError(f"{path}: no [params.NAME] table, nothing to tune")
    both = sorted(set(fixed) & set(params))
    if both:
        raise ConfigError(f"{path}: {', '.join(both)} both fixed and tuned; keep one")
    space = SearchSpace(Path(path), dict(fixed), parameters)
    space.check(preset)
    return space


def _read_toml(path: Path, what: str) -> dict[str, Any]:
    """A TOML file's tables; a missing, empty, non-UTF-8 or malformed file is one line naming it."""
    if not path.is_file():
        raise MissingFileError(f"{path}: no such {what} file")
    text = read_text(path, f"the {what} file is empty")
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not TOML ({error})") from None


def _parameter(path: Path, name: str, spec: Any) -> Parameter:
    where = f"{path}: params.{name}"
    if not isinstance(spec, dict) or spec.get("type") not in KINDS:
        raise ConfigError(f"{where} needs type = one of {', '.join(KINDS)}")
    kind = spec["type"]
    allowed = {"type", "choices"} if kind == "categorical" else {"type", "low", "high", "log"}
    extra = sorted(set(spec) - allowed)
    if extra:
        raise ConfigError(f"{where}: {', '.join(extra)} do not apply to type {kind!r}")
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where} needs a non-empty list of choices")
        return Parameter(name, kind, choices=tuple(choices))
    number = float if kind == "float" else int
    low, high = (_bound(spec.get(label), label, number, where) for label in ("low", "high"))
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{where}: log needs true or false, got {log!r}")
    if not low < high or (log and low <= 0):
        raise ConfigError(f"{where}: needs low < high (and low > 0 on a log scale), got {low}, {high}")
    return Parameter(name, kind, number(low), number(high), log)


def _bound(value: Any, label: str, number: type, where: str) -> float | int:
    """A range end from a space file: a number (an integer for an int range), not a boolean."""
    if isinstance(value, bool) or not isinstance(value, (int, float) if number is float else int):
        raise ConfigError(f"{where}: {label} needs {'a number' if number is float else 'an integer'}, got {value!r}")
    return value
