"""`python -m crossan.export` is `crossan export`."""

from crossan.export.cli import main
from crossan.zoo.cli.options import run_cli

if __name__ == "__main__":
    run_cli(main)
