"""Building models and asking for help stay light: `import crossan`, every preset's config (the
end-to-end ones included), `list_models()`, `create_model` and every command's `--help` load
neither Triton nor transformers nor ONNX; the kernel module is imported when a side network
first runs it; the `--help` of the commands whose options need no model loads no PyTorch either.
Checked in a fresh interpreter (this one has them loaded)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from crossan.command import SUBCOMMANDS

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("triton", "transformers", "onnx", "onnxruntime", "crossan.kernels.gated_mix_down")
# Command lines whose `--help` loads no PyTorch, then those whose help lists the presets, the
# backbone sources or the experiment tables (found by importing the model registry, with PyTorch).
HELP_WITHOUT_TORCH = (
    ["evaluate.py"],
    ["-m", "crossan.export"],
    ["crossan"],
    ["crossan", "evaluate"],
    ["crossan", "export"],
    ["crossan", "models"],
    ["crossan", "batch"],
)
HELP_WITH_TORCH = (["train.py"], ["crossan", "train"], ["crossan", "tune"], ["crossan", "experiments"])
# Runs a command line's `--help` in this interpreter as its own process would: `python SCRIPT`,
# `python -m MODULE` or the `crossan` console script.
HELP_RUNNER = """
import contextlib, io, runpy, sys
from crossan.command import main as crossan

def answer_help(argv):
    sys.argv = [*argv, "--help"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            if argv[0] == "crossan":
                crossan([*argv[1:], "--help"])
            elif argv[0] == "-m":
                runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
            else:
                runpy.run_path(argv[0], run_name="__main__")
        except SystemExit as exit_:
            assert exit_.code == 0, (argv, exit_.code)
    assert "usage:" in out.getvalue(), (argv, out.getvalue())
"""


def loaded_after(code: str, names: tuple[str, ...] = HEAVY) -> list[list[str]]:
    """The modules of `names` loaded wherever `code`, run in a fresh interpreter, calls `report()`."""
    report = f"import sys\ndef report():\n    print(','.join(n for n in {names!r} if n in sys.modules))\n"
    result = subprocess.run(
        [sys.executable, "-c", report + code], cwd=REPO, capture_output=True, text=True, timeout=180
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return [[name for name in line.split(",") if name] for line in result.stdout.splitlines()]


def test_models_are_built_without_the_kernel_or_backbones_and_the_kernel_loads_when_one_first_runs() -> None:
    code = (
        "import torch, crossan\nfrom crossan.zoo.models.registry import preset_config\n"
        "names = crossan.list_models()\n"
        "assert len(names) > 10, names\n"
        "configs = [preset_config(name) for name in names]\n"
        "model = crossan.create_model('crossan-tiva').eval()\n"
        "report()\n"
        "side = model.side\n"
        "width = side.layers[0].down_weight.shape[1]\n"
        "states = torch.zeros(len(side.layers), side.gates.num_modalities, 2, width)\n"
        "side(states)\n"
        "report()\n"
    )
    built, ran = loaded_after(code)
    assert built == []
    assert "crossan.kernels.gated_mix_down" in ran


def test_the_end_to_end_default_backbones_are_transformers_defaults() -> None:
    """The backbone configs an end-to-end preset fills in without transformers are, key for key
    and in order, those of transformers' `BertConfig()` and `ViTConfig()`."""
    from transformers import BertConfig, ViTConfig

    from crossan.zoo.models import list_models, preset_config
    from crossan.zoo.models.config import StoredFeatures

    expected = {"text": list(BertConfig().to_dict().items()), "image": list(ViTConfig().to_dict().items())}
    configs = [
        config for config in map(preset_config, list_models()) if config.stored_features is StoredFeatures.INPUTS
    ]  # the models that run their backbones
    assert len(configs) >= 4
    for config in configs:
        assert [list(backbone.items()) for backbone in config.backbones] == [expected[m] for m in config.modalities]


def test_every_help_loads_no_kernel_nor_backbones_and_the_light_ones_no_torch() -> None:
    assert {argv[1] for argv in (*HELP_WITHOUT_TORCH, *HELP_WITH_TORCH) if argv[0] == "crossan" and argv[1:]} == set(
        SUBCOMMANDS
    )
    code = (
        HELP_RUNNER
        + "".join(f"answer_help({argv!r})\n" for argv in HELP_WITHOUT_TORCH)
        + "report()\n"
        + "".join(f"answer_help({argv!r})\n" for argv in HELP_WITH_TORCH)
        + "report()\n"
    )
    light, every = loaded_after(code, (*HEAVY, "torch"))
    assert light == []
    assert every == ["torch"]
