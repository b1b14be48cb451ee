"""Run a top-level script's `main` inside the test process, as its command line would: same
arguments, same one-line errors and exit status, with stdout and stderr captured. This spares
each call a new interpreter importing PyTorch and transformers (seconds each)."""

from __future__ import annotations

import contextlib
import importlib.util
import io
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType

from crossan.zoo.cli.options import run_cli

PROJECT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class ScriptResult:
    returncode: int
    stdout: str
    stderr: str


@cache
def _script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"_script_{name}", PROJECT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_script(name: str, *args: str) -> ScriptResult:
    """`python <name>.py <args>`, in this process: the exit status and what it printed."""
    return run_main(_script(name).main, *args)


def run_main(main: Callable[[list[str]], int], *args: str) -> ScriptResult:
    """A command's `main(argv)` run as its command line would be (`run_cli`), in this process."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            run_cli(lambda: main(list(args)))
            code = 0
        except SystemExit as exit_:
            code = int(exit_.code or 0)
    return ScriptResult(code, stdout.getvalue(), stderr.getvalue())
