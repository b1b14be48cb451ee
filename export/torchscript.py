"""TorchScript export of one encoder by tracing.

`torch.jit.script` cannot compile these models (their config dataclass is an attribute it
cannot type, and `encode_items` takes `*item_inputs`), so the encoders are traced. The tracer
records tensor sizes symbolically, so batch and length stay dynamic; the Python-side input
checks (`if states.shape[2] != width: raise ...`) are frozen as constants, which costs
nothing because they only ever raise. Validation at shapes other than the trace shape
confirms that nothing else was frozen.

The traced module is then frozen (`torch.jit.freeze`): the wrappers hold the whole model, and
freezing keeps only the parameters the traced graph uses (the user encoder shrinks from the
size of the model to that of SASRec).
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

__all__ = ["export_torchscript"]


def export_torchscript(module: nn.Module, example_inputs: Sequence[torch.Tensor], path: Path) -> Path:
    """Trace `module` on `example_inputs`, freeze it and save it to `path` (load with `torch.jit.load`)."""
    module = module.eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        traced = torch.jit.trace(module, tuple(example_inputs), check_trace=False)
    frozen = torch.jit.freeze(traced)
    # Serialised in memory and written by Python: torch's own file writer aborts the whole
    # process on a failed write (a full disk), where Python raises an OSError naming the file.
    buffer = io.BytesIO()
    torch.jit.save(frozen, buffer)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())
    return path
