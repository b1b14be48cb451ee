"""The `crossan` command: its help lists every subcommand, each subcommand answers `--help` as
`crossan SUB`, an unknown one or a user error is one line and exit status 2, and a subcommand
does what its script does. In-process (`run_main`) but for two runs of the installed console
script itself."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from scripts import run_main, run_script

from crossan import command
from crossan.command import SUBCOMMANDS

REPO = Path(__file__).resolve().parents[1]


def crossan(*args: str) -> subprocess.CompletedProcess[str]:
    """The installed `crossan` console script (the one beside this interpreter first) with `args`."""
    script = shutil.which(
        "crossan", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    )
    assert script, "no crossan console script beside this interpreter or on PATH: pip install -e ."
    return subprocess.run([script, *args], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_help_lists_every_subcommand() -> None:
    result = run_main(command.main, "--help")
    assert result.returncode == 0
    listed = [line.split()[0] for line in result.stdout.split("commands:\n")[1].splitlines() if line.startswith("  ")]
    assert set(SUBCOMMANDS) <= set(listed)


def test_no_subcommand_prints_the_usage_as_an_error() -> None:
    result = run_main(command.main)
    assert result.returncode == 2
    assert result.stdout == ""
    assert "usage: crossan" in result.stderr


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_every_subcommand_answers_help_as_crossan_sub(name: str) -> None:
    result = run_main(command.main, name, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: crossan {name} ")


def test_an_unknown_subcommand_is_one_line_and_exit_2() -> None:
    result = crossan("trian", "--preset", "crossan-tiva")
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [f"crossan: unknown command 'trian'; use one of {', '.join(SUBCOMMANDS)}"]


def test_a_user_error_in_a_subcommand_is_one_line_and_exit_2() -> None:
    result = crossan("evaluate", "--baseline", "popularity", "--device", "cuda")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "error: --device applies to runs (--run, --compare); popularity runs on the CPU"
    ]


def test_a_user_error_deep_in_a_subcommand_is_one_line_and_exit_2() -> None:
    result = run_main(command.main, "train", "--preset", "crossan-t", "--data", "amazon")
    assert result.returncode == 2
    assert result.stderr.splitlines() == ["error: --data amazon needs --data-root DIR"]


def test_models_json_is_the_registry() -> None:
    from crossan.zoo.models import list_models
    from crossan.zoo.models.registry import preset_architecture

    result = run_main(command.main, "models", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {name: preset_architecture(name) for name in list_models()}


def test_evaluate_gives_what_evaluate_py_gives(toy_root: Path, cache_dir: Path) -> None:
    args = (
        "--baseline",
        "popularity",
        "--data",
        "toy",
        "--data-root",
        str(toy_root),
        "--cache-dir",
        str(cache_dir),
        "--split",
        "valid",
        "--json",
    )
    from_command = run_main(command.main, "evaluate", *args)
    from_script = run_script("evaluate", *args)
    assert from_command.returncode == from_script.returncode == 0, from_command.stderr + from_script.stderr
    report = json.loads(from_command.stdout)
    assert report == json.loads(from_script.stdout)
    assert (report["run"], report["split"]) == ("popularity", "valid")
