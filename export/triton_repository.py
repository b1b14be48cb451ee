"""A Triton Inference Server model repository from an export folder.

Triton's ONNX Runtime backend serves a *model repository*: one folder per model holding its
`config.pbtxt` (the model configuration, protobuf text format) and numbered version folders
with the model file (`1/model.onnx`). Each ONNX encoder of an export becomes one such model,
named after its file (`user_encoder`, `item_encoder`, `text_backbone`, ...):

- `max_batch_size` > 0 with `dynamic_batching`: Triton owns the batch axis (the exported
  encoders' first axis, dynamic in every one of them) and merges concurrent requests into one
  run; `dims` list the axes after it, -1 for the other dynamic axes.
- input and output names and data types are read from the ONNX graph itself, so the
  configuration cannot drift from the file beside it.
- `instance_group` of kind `KIND_AUTO`: a GPU instance where the server has a GPU, else a CPU
  one, so one repository serves both fleets.
- `optimization { graph { level: 1 } }`: ONNX Runtime's extended graph optimisations.

Retrieval is not a Triton model: the item table (and the FAISS index when the export has one)
lie at the repository's top level, where Triton, which loads folders only, leaves them, with a
README that says in which order a client calls the pieces. The repository is written into a
hidden folder beside its destination and renamed into place when complete, so a failed or killed
write never leaves a half repository that Triton would load.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import onnx

from crossan.export.ann_index import INDEX_FILE, SIDECAR_FILE
from crossan.export.content import ITEM_ENCODER_FILE
from crossan.export.item_table import TABLE_FILE
from crossan.export.publishing import BACKBONE_FILE
from crossan.export.reading import missing_folder_error
from crossan.export.serve import USER_ENCODER_FILE
from crossan.zoo.core.errors import ConfigError

__all__ = [
    "DEFAULT_MAX_BATCH_SIZE",
    "check_new_repository",
    "MODEL_FILE",
    "TRITON_DATA_TYPES",
    "TensorConfig",
    "model_config_text",
    "onnx_tensors",
    "write_triton_repository",
]

DEFAULT_MAX_BATCH_SIZE = 64
"""Requests Triton may merge into one run of an encoder (the user encoder answers 256 users in
about the time of a few; the backbones are the heavy models, and memory bounds them)."""
MAX_QUEUE_DELAY_MICROSECONDS = 500
"""How long dynamic batching waits for more requests before running a batch."""
MODEL_FILE = "model.onnx"
"""The file name Triton's ONNX Runtime backend looks for in a version folder."""
VERSION = "1"

TRITON_DATA_TYPES: dict[int, str] = {
    onnx.TensorProto.FLOAT: "TYPE_FP32",
    onnx.TensorProto.FLOAT16: "TYPE_FP16",
    onnx.TensorProto.DOUBLE: "TYPE_FP64",
    onnx.TensorProto.INT64: "TYPE_INT64",
    onnx.TensorProto.INT32: "TYPE_INT32",
    onnx.TensorProto.INT8: "TYPE_INT8",
    onnx.TensorProto.UINT8: "TYPE_UINT8",
    onnx.TensorProto.BOOL: "TYPE_BOOL",
}
"""ONNX element types and the names Triton's model configuration gives them."""


@dataclass(frozen=True)
class TensorConfig:
    """One input or output as a Triton configuration states it: its dims leave out the batch axis."""

    name: str
    data_type: str
    dims: tuple[int, ...]


def onnx_tensors(path: Path) -> tuple[list[TensorConfig], list[TensorConfig]]:
    """The graph inputs and outputs of the ONNX file at `path` as Triton tensors. Every one must
    have a dynamic first axis (the batch, which `max_batch_size` then owns); other dynamic axes
    become -1."""
    model = onnx.load(path, load_external_data=False)
    initialisers = {tensor.name for tensor in model.graph.initializer}

    def convert(value: onnx.ValueInfoProto) -> TensorConfig:
        tensor_type = value.type.tensor_type
        dims = tensor_type.shape.dim
        if not dims or dims[0].HasField("dim_value"):
            raise ConfigError(f"{path}: {value.name} has no dynamic batch axis first; Triton cannot batch it")
        data_type = TRITON_DATA_TYPES.get(tensor_type.elem_type)
        if data_type is None:
            name = onnx.TensorProto.DataType.Name(tensor_type.elem_type)
            raise ConfigError(f"{path}: {value.name} is of ONNX type {name}, which no Triton data type matches")
        return TensorConfig(
            value.name, data_type, tuple(dim.dim_value if dim.HasField("dim_value") else -1 for dim in dims[1:])
        )

    inputs = [convert(value) for value in model.graph.input if value.name not in initialisers]
    return inputs, [convert(value) for value in model.graph.output]


def _tensor_entries(tensors: list[TensorConfig]) -> str:
    return ",\n".join(
        f'  {{\n    name: "{tensor.name}"\n    data_type: {tensor.data_type}\n'
        f"    dims: [ {', '.join(map(str, tensor.dims))} ]\n  }}"
        for tensor in tensors
    )


def model_config_text(
    name: str, inputs: list[TensorConfig], outputs: list[TensorConfig], max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
) -> str:
    """The `config.pbtxt` of one ONNX Runtime model (the module docstring says why each part)."""
    return (
        f'name: "{name}"\n'
        'backend: "onnxruntime"\n'
        f"max_batch_size: {max_batch_size}\n"
        f"input [\n{_tensor_entries(inputs)}\n]\n"
        f"output [\n{_tensor_entries(outputs)}\n]\n"
        f"dynamic_batching {{\n  max_queue_delay_microseconds: {MAX_QUEUE_DELAY_MICROSECONDS}\n}}\n"
        "instance_group [\n  {\n    count: 1\n    kind: KIND_AUTO\n  }\n]\n"
        "optimization {\n  graph {\n    level: 1\n  }\n}\n"
    )


def _encoder_files(export_dir: Path) -> list[Path]:
    """The export's ONNX encoders, the user encoder first (every export has it)."""
    files = [export_dir / USER_ENCODER_FILE, export_dir / ITEM_ENCODER_FILE]
    files += sorted(path for path in export_dir.iterdir() if BACKBONE_FILE.fullmatch(path.name))
    missing = [path.name for path in files if not path.is_file()]
    if missing:
        raise ConfigError(f"{export_dir}: no {', '.join(missing)}; is it a folder written by `crossan export`?")
    return files


def _readme(models: list[str], has_index: bool) -> str:
    backbones = [name for name in models if name.endswith("_backbone")]
    new_items = (
        f"3. New items: preprocess the raw content as `preprocessing.json` of the export says, run "
        f"{', '.join(f'`{name}`' for name in backbones)} to get the `states_<modality>` inputs, then "
        f"`item_encoder`; append the embeddings to the table (and the index).\n"
        if backbones
        else "3. New items: `item_encoder` turns backbone states (`states_<modality>`) into item embeddings; "
        "append them to the table (and the index).\n"
    )
    index = (
        f"   or search `{INDEX_FILE}` (FAISS, built from the table with the settings in `{SIDECAR_FILE}`).\n"
        if has_index
        else ""
    )
    return (
        "# Triton model repository written by `crossan export --triton-repo`\n\n"
        "Serve it with `tritonserver --model-repository <this folder>`. Models (ONNX Runtime backend, "
        "dynamic batching, one instance on a GPU where there is one, else on the CPU):\n\n"
        + "".join(f"- `{name}`: `{name}/config.pbtxt`, `{name}/{VERSION}/{MODEL_FILE}`\n" for name in models)
        + "\nHow a request is answered:\n\n"
        f"1. Look up the embeddings of the user's most recent items (oldest first, at most the user "
        f"encoder's length limit) in `{TABLE_FILE}` (safetensors; the item ids are in its metadata), "
        "left-pad them, and call `user_encoder` with `item_embeddings` and `padding_mask` (True on padding).\n"
        f"2. Score every row of `{TABLE_FILE}` by its inner product with `user_embedding`, drop the "
        "history's items and keep the best k,\n" + index + new_items
    )


def check_new_repository(repo_dir: Path) -> None:
    """One line unless `repo_dir` is a new or empty folder: a repository is never written over files."""
    if repo_dir.exists() and (not repo_dir.is_dir() or any(repo_dir.iterdir())):
        raise ConfigError(f"{repo_dir}: not a new or empty folder; a model repository is written into one")


def write_triton_repository(
    export_dir: str | Path, repo_dir: str | Path, max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
) -> list[str]:
    """Write a Triton model repository for the export in `export_dir` to `repo_dir` (new or
    empty); returns the model names. Each encoder's file is copied as `<model>/1/model.onnx`
    beside a `config.pbtxt` read off its graph; the item table and index are copied beside."""
    export_dir, repo_dir = Path(export_dir), Path(repo_dir)
    if not export_dir.is_dir():
        raise missing_folder_error(export_dir)
    if max_batch_size < 1:
        raise ConfigError(f"the Triton max_batch_size must be at least 1, got {max_batch_size}")
    check_new_repository(repo_dir)
    encoders = _encoder_files(export_dir)
    repo_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{repo_dir.name}.partial-", dir=repo_dir.parent))
    try:
        models = []
        for path in encoders:
            name = path.stem
            inputs, outputs = onnx_tensors(path)
            (staging / name / VERSION).mkdir(parents=True)
            shutil.copyfile(path, staging / name / VERSION / MODEL_FILE)
            (staging / name / "config.pbtxt").write_text(model_config_text(name, inputs, outputs, max_batch_size))
            models.append(name)
        retrieval = [export_dir / name for name in (TABLE_FILE, INDEX_FILE, SIDECAR_FILE)]
        for path in retrieval:
            if path.is_file():
                shutil.copyfile(path, staging / path.name)
        (staging / "README.md").write_text(_readme(models, (export_dir / INDEX_FILE).is_file()))
        os.chmod(staging, 0o755)  # mkdtemp's folder is private; a server runs as another user
        if repo_dir.is_dir():
            repo_dir.rmdir()  # empty, checked above
        os.rename(staging, repo_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return models
