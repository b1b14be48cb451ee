"""Experiment tables as data: a TOML (or JSON) file lists the runs of one table.

    title = "Table 7: modalities kept per item by MOMEF (top-k)"
    baseline = "top-2"                  # the row others are compared with (t-test, improvement)
    train = { epochs = 30 }             # training options shared by every run (optional)
    sweep = { parameter = "top_k", log_scale = false }   # optional: a PNG of metric vs value

    [[runs]]
    name = "top-1"
    preset = "crossan-tiva"
    set = { top_k = 1 }                 # model or training config fields
    value = 1                           # the row's x value in a sweep
    compare_to = "top-2"                # optional: another comparison row than `baseline`

Built-in tables live in `zoo/experiments/tables/`; any other file path works the same way.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crossan.zoo.core.errors import ConfigError, MissingFileError
from crossan.zoo.core.reading import read_text
from crossan.zoo.models import list_models, preset_config
from crossan.zoo.runs.settings import split_options
from crossan.zoo.training.trainer import TrainConfig

__all__ = ["RunSpec", "Sweep", "TableDefinition", "builtin_tables", "load_table"]

TABLES_DIR = Path(__file__).with_name("tables")


@dataclass(frozen=True)
class RunSpec:
    """One row of a table: a preset with config overrides, trained once per seed."""

    name: str
    preset: str
    options: dict[str, Any] = field(default_factory=dict)
    value: float | None = None
    compare_to: str | None = None


@dataclass(frozen=True)
class Sweep:
    """A table whose rows vary one setting: drawn as metric against `parameter`."""

    parameter: str
    log_scale: bool = False


@dataclass(frozen=True)
class TableDefinition:
    name: str
    title: str
    runs: tuple[RunSpec, ...]
    baseline: str
    train: dict[str, Any] = field(default_factory=dict)
    sweep: Sweep | None = None

    def comparison(self, run: RunSpec) -> str | None:
        """The row `run` is compared with (None for the baseline row itself)."""
        other = run.compare_to or self.baseline
        return None if other == run.name else other


def builtin_tables() -> list[str]:
    return sorted(p.stem for p in TABLES_DIR.glob("*.toml"))


def load_table(name_or_path: str) -> TableDefinition:
    """A built-in table by name (`fusion`) or a definition file (`.toml` or `.json`)."""
    path = Path(name_or_path)
    if not path.suffix:
        path = TABLES_DIR / f"{name_or_path}.toml"
        if not path.is_file():
            raise MissingFileError(
                f"no table named {name_or_path!r}; built-in tables: {', '.join(builtin_tables())} "
                "(or give a .toml/.json file)"
            )
    if not path.is_file():
        raise MissingFileError(f"{path}: no such table definition")
    return _parse(path, _read(path))


def _read(path: Path) -> Any:
    """The TOML (or, for any other suffix, JSON) value of a definition file; a non-UTF-8, empty or
    malformed file is one line naming it."""
    text = read_text(path, "the table definition is empty")
    kind = "TOML" if path.suffix == ".toml" else "JSON"
    try:
        return tomllib.loads(text) if kind == "TOML" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(f"{path}: not valid {kind}: {error}") from None


def _require(path: Path, where: str, value: Any, kind: type | tuple[type, ...], what: str) -> Any:
    """`value` if it is a `kind`, else one line saying what `where` must be."""
    if not isinstance(value, kind):
        raise ConfigError(f"{path}: {where} must be {what}, got {value!r}")
    return value


def _run(path: Path, index: int, entry: Any) -> RunSpec:
    """Row `index` of the definition's `runs`, its keys and their types checked."""
    _require(path, f"run {index + 1}", entry, dict, "a table")
    extra = set(entry) - {"name", "preset", "set", "value", "compare_to"}
    if extra or "name" not in entry or "preset" not in entry:
        raise ConfigError(
            f"{path}: run {index + 1} needs `name` and `preset` (and takes only `set`, `value`, "
            f"`compare_to`){'; unknown: ' + ', '.join(sorted(extra)) if extra else ''}"
        )
    name = _require(path, f"run {index + 1}: name", entry["name"], str, "a string")
    if entry["preset"] not in list_models():
        raise ConfigError(f"{path}: run {name!r} names unknown preset {entry['preset']!r}")
    value = entry.get("value")
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise ConfigError(f"{path}: run {name!r}'s value must be a number, got {value!r}")
    options = _require(path, f"run {name!r}: set", entry.get("set", {}), dict, "a table of config values")
    compare_to = _require(path, f"run {name!r}: compare_to", entry.get("compare_to"), (str, type(None)), "a run name")
    return RunSpec(name, entry["preset"], dict(options), value, compare_to)


def _parse(path: Path, raw: Any) -> TableDefinition:
    _require(path, "a table definition", raw, dict, "a table of keys (title, baseline, train, sweep, runs)")
    unknown = set(raw) - {"title", "baseline", "train", "sweep", "runs"}
    if unknown:
        raise ConfigError(f"{path}: unknown keys {', '.join(sorted(unknown))}")
    runs = [
        _run(path, index, entry)
        for index, entry in enumerate(_require(path, "runs", raw.get("runs", []), list, "a list of [[runs]] tables"))
    ]
    if not runs:
        raise ConfigError(f"{path}: a table needs at least one [[runs]] entry")
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: run names must be distinct")
    baseline = raw.get("baseline", names[0])
    for label, target in [("baseline", baseline), *(("compare_to", r.compare_to) for r in runs if r.compare_to)]:
        if target not in names:
            raise ConfigError(f"{path}: {label} {target!r} is not one of the runs ({', '.join(names)})")
    train = dict(_require(path, "train", raw.get("train", {}), dict, "a table of training config values"))
    for run in runs:  # fail on a bad field name or value now, not hours into the table
        train_values, model_values = split_options({**train, **run.options})
        try:
            preset_config(run.preset, **model_values)
            TrainConfig(**train_values)
        except ConfigError as error:
            raise ConfigError(f"{path}: run {run.name!r}: {error}") from None
        if "seed" in train_values:
            raise ConfigError(f"{path}: seeds come from --seeds, not from the definition")
    sweep = None
    if "sweep" in raw:
        spec = _require(path, "sweep", raw["sweep"], dict, "a table with a parameter name")
        if set(spec) - {"parameter", "log_scale"}:
            raise ConfigError(
                f"{path}: sweep takes `parameter` and `log_scale`; unknown: "
                f"{', '.join(sorted(set(spec) - {'parameter', 'log_scale'}))}"
            )
        sweep = Sweep(
            _require(path, "sweep.parameter", spec.get("parameter"), str, "a config field name"),
            _require(path, "sweep.log_scale", spec.get("log_scale", False), bool, "true or false"),
        )
        if any(r.value is None for r in runs):
            raise ConfigError(f"{path}: every run of a sweep needs a `value`")
    return TableDefinition(path.stem, raw.get("title", path.stem), tuple(runs), baseline, train, sweep)
