"""A run folder belongs to one run: a new training command never writes into another run's folder.

`python train.py ... --run-dir R` checks R before anything is computed or written: an empty or
absent R is taken; R naming a file, holding files that are not a run, or holding a run (the
same settings or not) stops with one line. That line names the settings that differ and the
ways on: `--resume R` continues the run that is there, another `--run-dir` or `--overwrite`
starts a new one. `--overwrite` replaces only a folder that holds a run (one with a
`config.json`), never an arbitrary folder, and only once the new run is ready to write.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from crossan.zoo.core.errors import ConfigError, UserError
from crossan.zoo.core.reading import read_json_object

__all__ = ["check_new_run_folder", "clear_run_folder", "flatten_settings"]

CONFIG_FILE = "config.json"
STATE_FILE = "trainer_state.json"
SHOWN_DIFFERENCES = 6


def flatten_settings(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"train": {"lr": 0.1}}` -> `{"train.lr": 0.1}`: the dotted keys `config.json` is compared by."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_settings(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def check_new_run_folder(run_dir: Path, intended: dict[str, Any], overwrite: bool = False) -> None:
    """Stop with one line unless a new run may start in `run_dir`.

    `intended` holds the new run's settings as dotted `config.json` keys (`preset`,
    `train.lr`, `data.fingerprint`, `model.<override>`, `code`); the line names those that
    differ from the run already there. With `overwrite`, a folder holding a run passes (it is
    cleared later, by `clear_run_folder`)."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--run-dir {run_dir} is a file, not a folder; choose another --run-dir")
    entries = _visible_entries(run_dir)
    if not entries:
        return
    config_path = run_dir / CONFIG_FILE
    if not config_path.is_file():
        shown = ", ".join(sorted(entries)[:4]) + (", ..." if len(entries) > 4 else "")
        raise ConfigError(
            f"--run-dir {run_dir} holds files that are not a run ({shown}); choose an empty or "
            "new folder (--overwrite replaces only a run folder)"
        )
    if overwrite:
        return
    try:
        recorded = read_json_object(config_path)
        differing = _differences(flatten_settings(recorded), intended)
        what = f"a {recorded.get('preset', 'damaged')} run ({_progress(run_dir)})"
    except UserError as error:
        differing, what = [], f"a damaged run ({error})"
    if differing:
        shown = "; ".join(differing[:SHOWN_DIFFERENCES])
        extra = f"; and {len(differing) - SHOWN_DIFFERENCES} more" if len(differing) > SHOWN_DIFFERENCES else ""
        said = f"it differs from this command in {shown}{extra}"
    else:
        said = "with the settings of this command"
    raise ConfigError(
        f"--run-dir {run_dir} holds {what}, {said}; continue that run with "
        f"`python train.py --resume {run_dir}`, or start this one in another --run-dir "
        "or with --overwrite (which deletes the run there)"
    )


def clear_run_folder(run_dir: Path) -> None:
    """Delete the run in `run_dir` (checked by `check_new_run_folder` with `overwrite`)."""
    run_dir = Path(run_dir)
    if _visible_entries(run_dir):
        if not (run_dir / CONFIG_FILE).is_file():
            raise ConfigError(f"{run_dir} no longer holds a run; not deleting it")
        shutil.rmtree(run_dir)


def _visible_entries(run_dir: Path) -> list[str]:
    """What the folder holds, leaving out the hidden temporary files an atomic write that was
    killed leaves behind (`.name.xxxx.tmp`), which no reader loads."""
    if not run_dir.is_dir():
        return []
    return [
        entry.name for entry in run_dir.iterdir() if not (entry.name.startswith(".") and entry.name.endswith(".tmp"))
    ]


def _progress(run_dir: Path) -> str:
    state_path = run_dir / STATE_FILE
    if not state_path.is_file():
        return "not yet past its first epoch"
    state = read_json_object(state_path)
    return "finished" if state.get("finished") else f"killed or running after epoch {state.get('epoch', '?')}"


def _differences(recorded: dict[str, Any], intended: dict[str, Any]) -> list[str]:
    return [
        f"{key} ({recorded.get(key)!r} there, {value!r} now)"
        for key, value in intended.items()
        if recorded.get(key) != value
    ]
