"""The `crossan` command: one subcommand per task, each the `main(argv)` of its module.

    crossan train --preset crossan-tiva
    crossan evaluate --run weights/<run>
    crossan export --run weights/<run> --with-backbones
    crossan tune --preset crossan-t --data amazon --data-root DIR --trials 24
    crossan experiments fusion --data toy --seeds 42 43 44
    crossan models

A subcommand's module is imported only when it runs, so `crossan --help` loads no PyTorch.
"""

from __future__ import annotations

import importlib
import sys

from crossan.zoo.cli.options import run_cli

__all__ = ["SUBCOMMANDS", "main"]

# name -> (module defining `main(argv) -> int`, one line of help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "train": ("crossan.zoo.cli.train", "train a preset or a recipe into a run folder, or resume one"),
    "evaluate": ("crossan.zoo.cli.evaluate", "evaluate a run (or popularity): full ranking, paired tests, analyses"),
    "export": ("crossan.export.cli", "export a run's encoders to ONNX and TorchScript, validated against PyTorch"),
    "batch": ("crossan.export.batch_command", "top-k for every user of a users file into Parquet: resumable, sharded"),
    "tune": ("crossan.zoo.cli.tune", "search a preset's recipe on the validation split (Optuna)"),
    "experiments": ("crossan.zoo.cli.experiments", "train and summarise one of the paper's experiment tables"),
    "models": ("crossan.zoo.cli.models", "list the model presets"),
}


def usage() -> str:
    """The command's help: its subcommands, a line each."""
    width = max(map(len, SUBCOMMANDS))
    lines = [f"  {name:<{width}}  {text}" for name, (_, text) in SUBCOMMANDS.items()]
    return "\n".join(
        [
            "usage: crossan <command> [options]   (crossan <command> --help for its options)",
            "",
            "commands:",
            *lines,
            "",
            "  --version  print the version",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> None:
    """Run the subcommand `argv[0]` with the rest of `argv` (default: the process's arguments)
    and exit with its status; user errors are one line on stderr (exit status 2)."""
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0] in ("-h", "--help"):  # with no command at all: the usage as the error
        print(usage(), end="", file=sys.stdout if args else sys.stderr)
        sys.exit(0 if args else 2)
    if args[0] == "--version":
        from importlib.metadata import version

        print(f"crossan {version('crossan')}")
        sys.exit(0)
    if args[0] not in SUBCOMMANDS:
        print(f"crossan: unknown command {args[0]!r}; use one of {', '.join(SUBCOMMANDS)}", file=sys.stderr)
        sys.exit(2)
    module = importlib.import_module(SUBCOMMANDS[args[0]][0])
    run_cli(lambda: module.main(args[1:], prog=f"crossan {args[0]}"))
