"""The Triton model repository an export writes: every config.pbtxt parses as Triton's own
ModelConfig protobuf, states exactly what the ONNX graph beside it takes and gives, and every
model runs at two batch sizes up to its max_batch_size."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from google.protobuf import text_format
from scripts import run_main
from tritonclient.grpc import model_config_pb2

from crossan.export.cli import main as export_main
from crossan.export.triton_repository import write_triton_repository

# What onnxruntime calls each element type, and Triton's name for it (stated here, not imported).
ORT_TO_TRITON = {
    "tensor(float)": model_config_pb2.TYPE_FP32,
    "tensor(int64)": model_config_pb2.TYPE_INT64,
    "tensor(bool)": model_config_pb2.TYPE_BOOL,
}
NUMPY = {
    model_config_pb2.TYPE_FP32: np.float32,
    model_config_pb2.TYPE_INT64: np.int64,
    model_config_pb2.TYPE_BOOL: np.bool_,
}


def parse(path: Path) -> model_config_pb2.ModelConfig:
    """The file as Triton reads it: an unknown or misspelt field is a ParseError."""
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def example_inputs(config: model_config_pb2.ModelConfig, batch: int) -> dict[str, np.ndarray]:
    """Inputs for one run at `batch`: each free axis 4 long, token ids small, no padding."""
    rng = np.random.default_rng(0)
    inputs = {}
    for tensor in config.input:
        shape = (batch, *(4 if dim == -1 else dim for dim in tensor.dims))
        dtype = NUMPY[tensor.data_type]
        if dtype is np.bool_:
            inputs[tensor.name] = np.zeros(shape, dtype=bool)
        elif dtype is np.int64:
            inputs[tensor.name] = np.ones(shape, dtype=np.int64) * (1 if "mask" in tensor.name else 5)
        else:
            inputs[tensor.name] = rng.standard_normal(shape).astype(np.float32)
    return inputs


def check_repository(repo: Path, export: Path, models: list[str], max_batch_size: int) -> None:
    assert sorted(p.name for p in repo.iterdir() if p.is_dir()) == sorted(models)
    for name in models:
        config = parse(repo / name / "config.pbtxt")
        model_file = repo / name / "1" / "model.onnx"
        assert model_file.read_bytes() == (export / f"{name}.onnx").read_bytes()
        assert config.name == name and config.backend == "onnxruntime"
        assert config.max_batch_size == max_batch_size
        assert config.HasField("dynamic_batching")
        assert [group.kind for group in config.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_AUTO]
        session = ort.InferenceSession(model_file, providers=["CPUExecutionProvider"])
        for stated, actual in ((config.input, session.get_inputs()), (config.output, session.get_outputs())):
            assert [tensor.name for tensor in stated] == [value.name for value in actual]
            for tensor, value in zip(stated, actual, strict=True):
                assert tensor.data_type == ORT_TO_TRITON[value.type], (name, tensor.name)
                assert isinstance(value.shape[0], str), "the batch axis is dynamic"
                expected = [dim if isinstance(dim, int) else -1 for dim in value.shape[1:]]
                assert list(tensor.dims) == expected, (name, tensor.name)
        for batch in (1, max_batch_size):
            outputs = session.run(None, example_inputs(config, batch))
            for tensor, output in zip(config.output, outputs, strict=True):
                assert output.shape[0] == batch and len(output.shape) == len(tensor.dims) + 1
                assert all(d == -1 or d == size for d, size in zip(tensor.dims, output.shape[1:], strict=True))
                assert np.isfinite(output).all()


def test_the_repository_states_what_each_encoder_takes_and_runs_it(toy_export: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    models = write_triton_repository(toy_export, repo, max_batch_size=8)
    assert models == ["user_encoder", "item_encoder"]
    check_repository(repo, toy_export, models, 8)
    table = "item_embeddings.safetensors"
    assert (repo / table).read_bytes() == (toy_export / table).read_bytes()
    readme = (repo / "README.md").read_text()
    assert "tritonserver --model-repository" in readme and all(f"`{name}`" in readme for name in models)
    assert not list(tmp_path.glob(".repo.partial-*")), "the staging folder is renamed into place"


def test_the_protobuf_check_can_fail(toy_export: Path, tmp_path: Path) -> None:
    """A misspelt field does not parse: the check above is Triton's schema, not a formality."""
    write_triton_repository(toy_export, tmp_path / "repo", max_batch_size=8)
    text = (tmp_path / "repo" / "user_encoder" / "config.pbtxt").read_text()
    with pytest.raises(text_format.ParseError):
        text_format.Parse(text.replace("max_batch_size", "max_batch_sise"), model_config_pb2.ModelConfig())


def test_the_command_refuses_a_used_folder_before_exporting(toy_run: Path, tmp_path: Path) -> None:
    used = tmp_path / "used"
    used.mkdir()
    (used / "notes.txt").write_text("mine")
    out = tmp_path / "export"
    result = run_main(export_main, "--run", str(toy_run), "--out", str(out), "--triton-repo", str(used))
    assert result.returncode != 0 and "not a new or empty folder" in result.stderr
    assert not out.exists() and (used / "notes.txt").read_text() == "mine"
    alone = run_main(export_main, "--run", str(toy_run), "--out", str(out), "--triton-max-batch-size", "4")
    assert alone.returncode != 0 and "--triton-repo" in alone.stderr


def test_the_documented_client_call_is_python_for_this_repository() -> None:
    """docs/serving.md's tritonclient call compiles and names the user encoder's tensors."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "serving.md").read_text()
    section = text[text.index("## Triton Inference Server") :]
    (code,) = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)[:1]
    compile(code, "docs/serving.md", "exec")
    for name in (
        '"user_encoder"',
        '["item_embeddings"]',
        '"item_embeddings"',
        '"padding_mask"',
        '"user_embedding"',
        "tritonclient.http",
    ):
        assert name in code


@pytest.mark.slow
def test_the_repository_of_an_export_with_backbones_serves_every_backbone(
    toy_export_with_backbones: Path, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    models = write_triton_repository(toy_export_with_backbones, repo, max_batch_size=3)
    assert models[:2] == ["user_encoder", "item_encoder"]
    assert sorted(models[2:]) == ["audio_backbone", "image_backbone", "text_backbone", "video_backbone"]
    check_repository(repo, toy_export_with_backbones, models, 3)
