"""Evaluate a run: `python evaluate.py --run RUN` is `crossan evaluate --run RUN` (see
`crossan evaluate --help`)."""

from crossan.zoo.cli.evaluate import main
from crossan.zoo.cli.options import run_cli

if __name__ == "__main__":
    run_cli(main)
