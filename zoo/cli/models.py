"""`crossan models`: the model presets, with the architecture each builds."""

from __future__ import annotations

import argparse
import json

from crossan.zoo.cli.options import add_json_option


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The options of `crossan models`."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__)
    add_json_option(parser, "{preset: architecture} as JSON")
    return parser


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Print every preset and its architecture (no model is built)."""
    args = build_parser(prog).parse_args(argv)
    from crossan.zoo.models import list_models
    from crossan.zoo.models.registry import preset_architecture

    presets = {name: preset_architecture(name) for name in list_models()}
    if args.json:
        print(json.dumps(presets))
    else:
        width = max(map(len, presets))
        print("\n".join(f"{name:<{width}}  {architecture}" for name, architecture in presets.items()))
    return 0
