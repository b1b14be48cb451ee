"""Train a preset: `python train.py --preset crossan-tiva` is `crossan train --preset crossan-tiva`
(see `crossan train --help`)."""

from crossan.zoo.cli.options import run_cli
from crossan.zoo.cli.train import main

if __name__ == "__main__":
    run_cli(main)
