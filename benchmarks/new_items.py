"""Embedding new items from raw content: the PyTorch extractor vs the exported backbones.

    python benchmarks/new_items.py                                  # BERT-base + ViT-base shapes
    python benchmarks/new_items.py --modalities text image video audio --items 8 --json

For each modality, a randomly initialised backbone of the paper's size (`--widths paper`:
BertConfig(), ViTConfig(), VideoMAEConfig(), ASTConfig() with their default processors; `tiny`:
the test backbones) is exported with `crossan.export.backbones` exactly as `python -m crossan.export
--with-backbones` does, and both paths turn the same made-up contents (titles, 320x240 images,
16 frames of 240x320, 3 s of audio) into kept states: `StateExtractor.encode` (transformers
processor + PyTorch) and the serving path (`crossan.export.preprocessing` + onnxruntime, CPU provider).
Media decoding is left out of both. Throughput is the median of `--repeats` passes over
`--items` items in batches of `--batch`, both runtimes with the same number of threads. The
table also gives what one item costs to keep: its cached states (float16) and its embedding.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from machine import cpu_name
from PIL import Image
from rich.console import Console
from rich.table import Table
from timing import median_seconds, timed_call
from transformers import (
    ASTConfig,
    ASTFeatureExtractor,
    ASTModel,
    AutoTokenizer,
    BertConfig,
    BertModel,
    VideoMAEConfig,
    VideoMAEImageProcessorPil,
    VideoMAEModel,
    ViTConfig,
    ViTImageProcessorPil,
    ViTModel,
)

from crossan.export.backbones import export_backbones
from crossan.export.content import backbone_file
from crossan.export.preprocessing import load_preprocessing
from crossan.zoo.backbones import Backbone, BackboneSpec, StateExtractor
from crossan.zoo.backbones.minilm import minilm_dir
from crossan.zoo.backbones.tiny import tiny_backbone

MODALITIES = ("text", "image", "video", "audio")
SIDE_LAYERS = 6
EMBEDDING_BYTES = 64 * 4  # a 64-d float32 item embedding
WORDS = (
    "blue",
    "steel",
    "kettle",
    "lab",
    "glass",
    "beaker",
    "digital",
    "scale",
    "set",
    "of",
    "nitrile",
    "gloves",
    "microscope",
    "slide",
    "pipette",
    "tips",
    "sterile",
    "500",
    "ml",
    "with",
    "lid",
)


def paper_backbone(modality: str) -> tuple[torch.nn.Module, Any]:
    """A random backbone of the paper's size and its default processor (no download)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        if modality == "text":
            return BertModel(BertConfig()), AutoTokenizer.from_pretrained(minilm_dir())  # BERT uncased vocabulary
        if modality == "image":
            return ViTModel(ViTConfig()), ViTImageProcessorPil()
        if modality == "video":
            return VideoMAEModel(VideoMAEConfig()), VideoMAEImageProcessorPil()
        return ASTModel(ASTConfig()), ASTFeatureExtractor()


def make_extractor(modality: str, widths: str) -> StateExtractor:
    model, processor = paper_backbone(modality) if widths == "paper" else tiny_backbone(modality, seed=0)
    model.eval().requires_grad_(False)
    backbone = Backbone(BackboneSpec(modality), model, processor, identity={"modality": modality})
    return StateExtractor(backbone, side_layers=SIDE_LAYERS)


def made_up_contents(modality: str, count: int, generator: np.random.Generator) -> list[Any]:
    if modality == "text":
        return [" ".join(generator.choice(WORDS, size=int(generator.integers(5, 25)))) for _ in range(count)]
    if modality == "image":
        return [Image.fromarray(generator.integers(0, 256, (240, 320, 3), dtype=np.uint8)) for _ in range(count)]
    if modality == "video":
        return [[generator.integers(0, 256, (240, 320, 3), dtype=np.uint8) for _ in range(16)] for _ in range(count)]
    return [np.clip(generator.normal(0, 0.3, 48_000), -1, 1).astype(np.float32) for _ in range(count)]


def measure(modality: str, args: argparse.Namespace, threads: int, folder: Path) -> dict[str, Any]:
    extractor = make_extractor(modality, args.widths)
    _, export_seconds = timed_call(lambda: export_backbones({modality: extractor}, folder))
    preprocessor = load_preprocessing(folder)[modality]
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(folder / backbone_file(modality)), options, providers=["CPUExecutionProvider"])
    contents = made_up_contents(modality, args.items, np.random.default_rng(0))
    batches = [contents[i : i + args.batch] for i in range(0, len(contents), args.batch)]

    def pytorch() -> list[np.ndarray]:
        return [extractor.encode(batch).numpy() for batch in batches]

    def served() -> list[np.ndarray]:
        outputs = []
        for batch in batches:
            inputs = preprocessor(batch)
            outputs.append(session.run(None, {name: inputs[name] for name in preprocessor.input_names})[0])
        return outputs

    error = max(float(np.abs(a - b).max()) for a, b in zip(pytorch(), served(), strict=True))
    eager, onnx = median_seconds(pytorch, args.repeats), median_seconds(served, args.repeats)
    states, width = extractor.output_shape
    return {
        "modality": modality,
        "architecture": type(extractor.backbone.model).__name__,
        "pytorch_items_per_second": args.items / eager,
        "onnx_items_per_second": args.items / onnx,
        "onnx_over_pytorch": eager / onnx,
        "max_abs_error": error,
        "onnx_file_mb": (folder / backbone_file(modality)).stat().st_size / 2**20,
        "export_seconds": export_seconds,
        "cache_bytes_per_item": states * width * 2,
        "embedding_bytes_per_item": EMBEDDING_BYTES,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modalities", nargs="+", choices=MODALITIES, default=["text", "image"])
    parser.add_argument(
        "--widths",
        choices=("paper", "tiny"),
        default="paper",
        help="paper: base-size random backbones (default); tiny: the test backbones",
    )
    parser.add_argument("--items", type=int, default=16, help="made-up items per pass (default 16)")
    parser.add_argument("--batch", type=int, default=8, help="items per backbone call (default 8)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per runtime (default 3)")
    parser.add_argument("--threads", type=int, help="intra-op threads of both runtimes (default: PyTorch's)")
    parser.add_argument("--json", action="store_true", help="print one JSON object keyed by modality")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    results = {}
    for modality in args.modalities:
        with tempfile.TemporaryDirectory() as tmp:
            results[modality] = measure(modality, args, threads, Path(tmp))
    if args.json:
        print(json.dumps(results, indent=1))
        return 0
    table = Table(
        title=f"new items from raw content ({args.widths} widths): PyTorch extractor vs exported backbone",
        caption=f"{cpu_name()}; {threads} threads each; {args.items} items in batches of {args.batch}, "
        f"median of {args.repeats} passes, decoding excluded; cache: {SIDE_LAYERS + 1} float16 "
        f"states per item; torch {torch.__version__}, onnxruntime {ort.__version__}",
    )
    for column in (
        "modality",
        "backbone",
        "PyTorch items/s",
        "ONNX items/s",
        "ONNX / PyTorch",
        "max abs error",
        "ONNX MB",
        "export s",
        "cache bytes/item",
    ):
        table.add_column(column, justify="left" if column in ("modality", "backbone") else "right")
    for r in results.values():
        table.add_row(
            r["modality"],
            r["architecture"],
            f"{r['pytorch_items_per_second']:.1f}",
            f"{r['onnx_items_per_second']:.1f}",
            f"{r['onnx_over_pytorch']:.2f}",
            f"{r['max_abs_error']:.1e}",
            f"{r['onnx_file_mb']:.0f}",
            f"{r['export_seconds']:.0f}",
            f"{r['cache_bytes_per_item']:,}",
        )
    Console().print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
