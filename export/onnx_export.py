"""ONNX export of one encoder with `torch.onnx.export(dynamo=True)` and symbolic batch/length axes."""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch import nn

from crossan.export.spec import SPEC_METADATA_KEY, ExportSpec

__all__ = ["export_onnx"]


def export_onnx(module: nn.Module, spec: ExportSpec, example_inputs: Sequence[torch.Tensor], path: Path) -> Path:
    """Export `module` to `path` with the spec's names, dynamic axes and opset.

    torch.export specialises an axis whose example size is 1 (or equal to another axis'
    size by coincidence), so every dynamic axis needs an example size of at least 2.
    """
    example_inputs = tuple(example_inputs)
    if len(example_inputs) != len(spec.input_names):
        raise ValueError(f"{spec.name}: {len(example_inputs)} example inputs for inputs {spec.input_names}")
    dims = {
        axis: torch.export.Dim(axis, max=spec.max_sizes.get(axis))
        for axes in spec.dynamic_axes.values()
        for axis in axes.values()
    }
    shapes = torch.export.ShapesCollection()
    for name, tensor in zip(spec.input_names, example_inputs, strict=True):
        axes = spec.dynamic_axes.get(name, {})
        for index, axis in axes.items():
            if tensor.shape[index] < 2:
                raise ValueError(
                    f"{spec.name}: example {name} has size {tensor.shape[index]} on dynamic axis "
                    f"{axis!r}; use at least 2 or the axis becomes static"
                )
        shapes[tensor] = {index: dims[axis] for index, axis in axes.items()}
    module = module.eval()
    with torch.no_grad(), _quiet_exporter():
        program = torch.onnx.export(
            module,
            example_inputs,
            dynamo=True,
            input_names=list(spec.input_names),
            output_names=list(spec.output_names),
            dynamic_shapes=shapes.dynamic_shapes(module, example_inputs),
            opset_version=spec.opset,
            verbose=False,
        )
    if program is None:  # the exporter returns None only when asked to write the file itself
        raise RuntimeError("torch.onnx.export returned no ONNX program")
    program.model.metadata_props[SPEC_METADATA_KEY] = json.dumps(spec.to_dict())
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        program.save(path)
    except OSError as error:  # the writer's error (a full disk) does not say which file
        raise OSError(error.errno, error.strerror or str(error), str(path)) from error
    return path


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's notes about optional packages (torchvision) and deprecations."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx")
        warnings.filterwarnings("ignore", category=FutureWarning)
        logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            logger.setLevel(level)
