"""Optimised and int8 graphs against float32: speed, size, error and ranking, measured side by side.

    python benchmarks/variants.py                          # BERT-base + ViT-base, crossan-tiva user encoder
    python benchmarks/variants.py --run weights/<run>      # also the run's test NDCG@10 through each variant
    python benchmarks/variants.py --widths tiny --json

Every graph's variants are written as `python -m crossan.export --optimize --quantize int8` writes
them (`crossan.export.variant_export`), and the three variants of a graph (float32, opt, int8) are
timed in one process, their calls taking turns round by round (benchmarks/timing.py), every session
on the CPU provider with the same number of intra-op threads.

- New items: the text and image backbones (`--widths paper`: random BertConfig() and ViTConfig()
  models, built as benchmarks/new_items.py builds them; `tiny`: the test backbones), exported as
  `--with-backbones` does; items/s of preprocessing + backbone over `--items` made-up items in
  batches of `--batch` (decoding excluded), and the states' max abs error against float32.
- User encoder: latency at batch 1 and 256 (full-length histories, random embeddings), of the
  export of `--run` or else of `--preset` with random weights fitted to the paper's feature
  shapes (as benchmarks/export_latency.py).
- Ranking: top-10 agreement with float32 when every item is embedded by the variant's item encoder
  and every user by its user encoder. Without `--run`: `SAMPLE_ITEMS` random items and
  `SAMPLE_USERS` random histories of the random model. With `--run DIR`: the run's catalogue
  (from its cached states, or from raw content through the variant's backbones when its export
  has them) and its test users, ranked as the leave-one-out evaluation ranks them (full
  catalogue, history masked), which also gives each variant's test NDCG@10 and HR@10, and the
  relative change of NDCG@10 from float32 with its standard error and t-test paired over users. The run's
  export (`--export`, default <run>/export) must be written with `--optimize --quantize int8`.
"""

from __future__ import annotations

import argparse
import functools
import json
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from export_latency import USER_BATCHES, benchmark_model, user_inputs
from machine import cpu_name
from new_items import made_up_contents, make_extractor
from rich.console import Console
from rich.table import Table
from timing import interleaved_medians

from crossan.export.backbones import export_backbones
from crossan.export.content import ContentEncoder, backbone_file
from crossan.export.onnx_export import export_onnx
from crossan.export.preprocessing import load_preprocessing
from crossan.export.providers import CPU
from crossan.export.ranking import history_window, top_k_rows
from crossan.export.reading import open_session
from crossan.export.spec import ExportSpec, item_encoder_spec, user_encoder_spec
from crossan.export.variant_export import compare_rankings, write_variants
from crossan.export.variants import FLOAT32, INT8, VARIANTS, require_variant, variant_file
from crossan.export.wrappers import ItemEncoder, UserEncoder
from crossan.zoo.core.errors import ConfigError
from crossan.zoo.data.dataset import PAD
from crossan.zoo.models import list_models
from crossan.zoo.runs.run import Run, open_run
from crossan.zoo.training.evaluation import rank_all_users
from crossan.zoo.training.metrics import metrics_from_ranks, per_user_metric
from crossan.zoo.training.significance import paired_t_test

BACKBONE_MODALITIES = ("text", "image")
TOP_K = 10
SAMPLE_ITEMS = 2048
SAMPLE_USERS = 512
EMBED_BATCH = 256
WARMUP = 2


def session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=[CPU])


def errors(outputs: Mapping[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Max abs error of each variant's output against float32's, and relative to its largest magnitude."""
    reference = outputs[FLOAT32]
    scale = float(np.abs(reference).max())
    result = {}
    for variant, output in outputs.items():
        error = float(np.abs(output.astype(np.float64) - reference).max())
        result[variant] = {"max_abs_error": error, "relative_error": error / scale}
    return result


def variant_files(folder: Path, spec: ExportSpec) -> dict[str, Path]:
    return {v: require_variant(folder / variant_file(spec.onnx_file, v), v) for v in VARIANTS}


def measure_backbone(modality: str, args: argparse.Namespace, threads: int, folder: Path) -> dict[str, Any]:
    """Items/s of each variant of one backbone on the same made-up contents, with sizes and errors."""
    extractor = make_extractor(modality, args.widths)
    specs = export_backbones({modality: extractor}, folder)
    written = {w.variant: w for w in write_variants(folder, specs, optimize=True, quantize=INT8)}
    preprocessor = load_preprocessing(folder)[modality]
    paths = variant_files(folder, specs[0])
    sessions = {v: session(path, threads) for v, path in paths.items()}
    contents = made_up_contents(modality, args.items, np.random.default_rng(0))
    batches = [contents[i : i + args.batch] for i in range(0, len(contents), args.batch)]

    def served(variant: str) -> np.ndarray:
        outputs = []
        for batch in batches:
            inputs = preprocessor(batch)
            outputs.append(sessions[variant].run(None, {n: inputs[n] for n in preprocessor.input_names})[0])
        return np.concatenate(outputs)

    seconds = interleaved_medians({v: functools.partial(served, v) for v in VARIANTS}, args.repeats, warmup=1)
    measured = errors({v: served(v) for v in VARIANTS})
    return {
        "architecture": type(extractor.backbone.model).__name__,
        **{
            v: {
                "items_per_second": args.items / seconds[v],
                "over_float32": seconds[FLOAT32] / seconds[v],
                "megabytes": paths[v].stat().st_size / 2**20,
                **measured[v],
                **({"method": written[v].method, **written[v].statistics} if v in written else {}),
            }
            for v in VARIANTS
        },
    }


def random_model_files(args: argparse.Namespace, folder: Path) -> tuple[ExportSpec, ExportSpec, Any]:
    """The random `--preset` model's item and user encoders and their variants, written into `folder`."""
    model, _ = benchmark_model(args)
    item_spec, user_spec = item_encoder_spec(model), user_encoder_spec(model)
    export_onnx(ItemEncoder(model), item_spec, model.random_item_inputs(2), folder / item_spec.onnx_file)
    export_onnx(UserEncoder(model), user_spec, user_inputs(model, 2), folder / user_spec.onnx_file)
    write_variants(folder, [item_spec, user_spec], optimize=True, quantize=INT8)
    return item_spec, user_spec, model


def measure_user_encoder(
    folder: Path, spec: ExportSpec, width: int, threads: int, repeats: int
) -> dict[str, dict[str, Any]]:
    """Latency at each of `USER_BATCHES` of every variant of the user encoder in `folder`."""
    paths = variant_files(folder, spec)
    sessions = {v: session(path, threads) for v, path in paths.items()}
    max_len = spec.max_sizes["length"]
    generator = torch.Generator().manual_seed(0)
    result: dict[str, dict[str, Any]] = {v: {"megabytes": paths[v].stat().st_size / 2**20} for v in VARIANTS}
    for batch in USER_BATCHES:
        kept = torch.randint(1, max_len + 1, (batch,), generator=generator)
        padding_mask = (torch.arange(max_len) < (max_len - kept).unsqueeze(1)).numpy()
        feed = {
            "item_embeddings": torch.randn(batch, max_len, width, generator=generator).numpy(),
            "padding_mask": padding_mask,
        }
        calls = {v: functools.partial(sessions[v].run, None, feed) for v in VARIANTS}
        seconds = interleaved_medians(calls, repeats, WARMUP)
        measured = errors({v: sessions[v].run(None, feed)[0] for v in VARIANTS})
        for v in VARIANTS:
            result[v][f"latency_ms_b{batch}"] = seconds[v] * 1e3
            result[v][f"latency_over_float32_b{batch}"] = seconds[v] / seconds[FLOAT32]
            if batch == max(USER_BATCHES):
                result[v].update(measured[v])
    return result


def user_vectors(user_session: ort.InferenceSession, table: np.ndarray, windows: np.ndarray) -> np.ndarray:
    """User embeddings of left-padded `windows` of 1-based item indices (PAD = 0) over `table`."""
    rows, padding_mask = np.maximum(windows - 1, 0), windows == PAD
    return user_session.run(None, {"item_embeddings": table[rows], "padding_mask": padding_mask})[0]


def sampled_ranking(folder: Path, item_spec: ExportSpec, user_spec: ExportSpec, model: Any, threads: int) -> dict:
    """Top-10 agreement with float32 on `SAMPLE_ITEMS` random items and `SAMPLE_USERS` random histories."""
    generator = torch.Generator().manual_seed(1)
    items = [model.random_item_inputs(EMBED_BATCH, generator) for _ in range(SAMPLE_ITEMS // EMBED_BATCH)]
    max_len = user_spec.max_sizes["length"]
    lengths = torch.randint(1, max_len + 1, (SAMPLE_USERS,), generator=generator).tolist()
    histories = [torch.randint(1, SAMPLE_ITEMS + 1, (n,), generator=generator).numpy() for n in lengths]
    windows = np.stack([np.pad(h, (max_len - len(h), 0)) for h in histories])
    lists = {}
    item_paths, user_paths = variant_files(folder, item_spec), variant_files(folder, user_spec)
    for v in VARIANTS:
        item_session, user_session = session(item_paths[v], threads), session(user_paths[v], threads)
        table = np.concatenate(
            [
                item_session.run(None, {n: t.numpy() for n, t in zip(item_spec.input_names, batch, strict=True)})[0]
                for batch in items
            ]
        )
        lists[v] = top_k_rows(user_vectors(user_session, table, windows), table, histories, TOP_K)
    return {v: {"agreement": compare_rankings(lists[FLOAT32], lists[v], TOP_K).to_dict()} for v in VARIANTS}


def catalogue_table(run: Run, export_dir: Path, variant: str, contents: Mapping[str, list[Any]]) -> np.ndarray:
    """Every catalogue item's embedding through `variant`: from raw `contents` through its backbones
    and item encoder when the export has backbones (`contents` not empty), else from cached states."""
    num_items = run.dataset.num_items
    if contents:
        encoder = ContentEncoder(export_dir, [CPU], variant)
        chunks = []
        for start in range(0, num_items, EMBED_BATCH):
            rows = list(range(start, min(start + EMBED_BATCH, num_items)))
            states = {m: encoder.states(m, contents[m][start : rows[-1] + 1]) for m in encoder.modalities}
            chunks.append(encoder.embed_states(states, rows))
        return np.concatenate(chunks)
    path = export_dir / variant_file("item_encoder.onnx", variant)
    item_session, spec = open_session(require_variant(path, variant), [CPU], "item_encoder")
    chunks = []
    for start in range(0, num_items, EMBED_BATCH):
        inputs = run.features.gather(torch.arange(start, min(start + EMBED_BATCH, num_items)))
        feed = {n: t.cpu().numpy() for n, t in zip(spec.input_names, inputs, strict=True)}
        chunks.append(item_session.run(list(spec.output_names), feed)[0])
    return np.concatenate(chunks)


def variant_metrics(run: Run, table: np.ndarray, user_session: ort.InferenceSession) -> dict[str, Any]:
    """Test NDCG@10 and HR@10 (full catalogue, history masked, as `evaluate.py`) and the top-10 lists
    of every test user, ranked by `user_session` over `table`."""
    dataset, max_len = run.dataset, run.model.config.max_seq_len

    def score_users(users: np.ndarray) -> torch.Tensor:
        windows = dataset.recent_histories(users, "test", max_len)
        return torch.from_numpy(user_vectors(user_session, table, windows) @ table.T)

    ranks = rank_all_users(dataset, "test", score_users, mask_history=True)
    metrics = metrics_from_ranks(ranks)
    histories = [dataset.history(u, "test") for u in range(dataset.num_users)]
    rows, padding_mask = history_window(histories, max_len)
    vectors = user_session.run(None, {"item_embeddings": table[rows], "padding_mask": padding_mask})[0]
    return {
        "NDCG@10": metrics["NDCG@10"],
        "HR@10": metrics["HR@10"],
        "ranks": ranks,
        "lists": top_k_rows(vectors, table, histories, TOP_K),
    }


def paired_change(reference_ranks: torch.Tensor, variant_ranks: torch.Tensor) -> dict[str, float]:
    """The relative change of NDCG@10 from the reference's target ranks to the variant's, its
    standard error over users (paired: the same users in both), and the paired t-test's p-value
    (`paired_t_test`; 1 when no user's NDCG@10 changed, where the test is undefined)."""
    reference = per_user_metric(reference_ranks, "NDCG@10").double().numpy()
    difference = per_user_metric(variant_ranks, "NDCG@10").double().numpy() - reference
    if not difference.any():
        return {"ndcg_change": 0.0, "ndcg_change_standard_error": 0.0, "p_value": 1.0}
    scale = reference.mean()
    test = paired_t_test(variant_ranks, reference_ranks)["NDCG@10"]
    return {
        "ndcg_change": test["mean_difference"] / scale,
        "ndcg_change_standard_error": difference.std(ddof=1) / np.sqrt(len(difference)) / scale,
        "p_value": test["p_value"],
    }


def run_ranking(run: Run, export_dir: Path, threads: int) -> dict[str, Any]:
    """Test NDCG@10, HR@10 and top-10 agreement of the run through each variant of its export."""
    dataset = run.dataset
    if dataset.parts:
        raise ConfigError(f"{run.directory} trained on several catalogues; this benchmark ranks one")
    modalities = [m for m in ("text", "image", "video", "audio") if (export_dir / backbone_file(m)).is_file()]
    contents: dict[str, list[Any]] = {}
    if modalities:  # read (decode) every item's content once, for every variant
        reader = ContentEncoder(export_dir, [CPU])
        sources = {
            "text": dataset.required_titles,
            "image": dataset.required_cover_paths,
            "video": dataset.required_video_paths,
            "audio": dataset.required_video_paths,
        }
        contents = {m: reader.read(m, [str(s) for s in sources[m]()]) for m in reader.modalities}
    measured = {}
    for v in VARIANTS:
        user_path = require_variant(export_dir / variant_file("user_encoder.onnx", v), v)
        measured[v] = variant_metrics(run, catalogue_table(run, export_dir, v, contents), session(user_path, threads))
    result: dict[str, Any] = {
        v: {
            "NDCG@10": measured[v]["NDCG@10"],
            "HR@10": measured[v]["HR@10"],
            **paired_change(measured[FLOAT32]["ranks"], measured[v]["ranks"]),
            "agreement": compare_rankings(measured[FLOAT32]["lists"], measured[v]["lists"], TOP_K).to_dict(),
        }
        for v in VARIANTS
    }
    result["details"] = {
        "users": dataset.num_users,
        "items": dataset.num_items,
        "from_raw_content": modalities,
        "pytorch_test": json.loads((run.directory / "metrics.json").read_text())["test"],
    }
    return result


def print_tables(results: dict[str, Any], args: argparse.Namespace, threads: int) -> None:
    console = Console()
    caption = (
        f"{cpu_name()}; {threads} intra-op threads each, CPU provider; median of {args.repeats} interleaved rounds; "
        f"torch {torch.__version__}, onnxruntime {ort.__version__}"
    )
    backbones = Table(
        title=f"new items from raw content ({args.widths} widths): float32 vs optimised vs int8 backbone",
        caption=f"{caption}; {args.items} made-up items in batches of {args.batch}, preprocessing included, "
        f"decoding excluded; relative = max abs error / the float32 states' largest magnitude",
    )
    for column in ("backbone", "variant", "items/s", "x float32", "MB", "max abs error", "relative"):
        backbones.add_column(column, justify="left" if column in ("backbone", "variant") else "right")
    changes = []
    for modality, measured in results["backbones"].items():
        for v in VARIANTS:
            r = measured[v]
            backbones.add_row(
                f"{modality} ({measured['architecture']})" if v == FLOAT32 else "",
                v,
                f"{r['items_per_second']:.2f}",
                f"{r['over_float32']:.2f}",
                f"{r['megabytes']:.1f}",
                f"{r['max_abs_error']:.1e}",
                f"{r['relative_error']:.1e}",
            )
            if v != FLOAT32:
                changes.append(f"{modality} {v}: {graph_changes(r)}")
    if results["backbones"]:
        console.print(backbones)
    for line in changes:
        console.print(line)
    users = Table(
        title=f"user encoder ({results['user_encoder_source']}): float32 vs optimised vs int8",
        caption=f"{caption}; full-length histories of random embeddings; error at B={max(USER_BATCHES)}",
    )
    for column in ("variant", *(f"B={b} ms" for b in USER_BATCHES), *(f"B={b} x float32" for b in USER_BATCHES)):
        users.add_column(column, justify="left" if column == "variant" else "right")
    for column in ("MB", "max abs error", "relative"):
        users.add_column(column, justify="right")
    for v in VARIANTS:
        r = results["user_encoder"][v]
        users.add_row(
            v,
            *(f"{r[f'latency_ms_b{b}']:.3f}" for b in USER_BATCHES),
            *(f"{1 / r[f'latency_over_float32_b{b}']:.2f}" for b in USER_BATCHES),
            f"{r['megabytes']:.2f}",
            f"{r['max_abs_error']:.1e}",
            f"{r['relative_error']:.1e}",
        )
    console.print(users)
    ranking = results["ranking"]
    details = ranking.get("details")
    table = Table(
        title=f"top-{TOP_K} rankings through each variant vs float32 ({results['ranking_source']})",
        caption=(
            f"{details['users']} test users, {details['items']} items"
            + (f" from raw content ({', '.join(details['from_raw_content'])})" if details["from_raw_content"] else "")
            + f"; PyTorch test NDCG@10 {details['pytorch_test']['NDCG@10']:.4f} (the run's metrics.json)"
            if details
            else f"{SAMPLE_USERS} random histories over {SAMPLE_ITEMS} random items (random weights)"
        ),
    )
    columns = (
        "variant",
        "identical top-10",
        "mean overlap",
        *(("test NDCG@10", "vs float32", "± SE", "p", "test HR@10") if details else ()),
    )
    for column in columns:
        table.add_column(column, justify="left" if column == "variant" else "right")
    for v in VARIANTS:
        r = ranking[v]
        agreement = r["agreement"]
        cells = [v, f"{agreement['fraction']:.2%}", f"{agreement['mean_overlap']:.3f}"]
        if details:
            cells += [
                f"{r['NDCG@10']:.4f}",
                f"{r['ndcg_change']:+.2%}",
                f"{r['ndcg_change_standard_error']:.2%}",
                f"{r['p_value']:.2g}",
                f"{r['HR@10']:.4f}",
            ]
        table.add_row(*cells)
    console.print(table)


def graph_changes(measured: Mapping[str, Any]) -> str:
    """What the variant's writer did, in a few words: fusions, or operators quantised."""
    if "fused" in measured:
        fused = {name: count for name, count in measured["fused"].items() if count}
        attention = measured["fused"].get("Attention", 0) + measured["fused"].get("MultiHeadAttention", 0)
        return ", ".join(f"{name} {count}" for name, count in fused.items()) + f"; attention fused: {attention}"
    if "quantized" in measured:
        quantized = ", ".join(f"{name} {count}" for name, count in measured["quantized"].items())
        left = ", ".join(f"{name} {count}" for name, count in measured["float32_left"].items())
        return f"quantised {quantized}; left in float32 {left or 'none'}"
    return ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modalities", nargs="*", choices=BACKBONE_MODALITIES, default=list(BACKBONE_MODALITIES))
    parser.add_argument(
        "--widths",
        choices=("paper", "tiny"),
        default="paper",
        help="paper: base-size random backbones (default); tiny: the test backbones",
    )
    parser.add_argument("--items", type=int, default=16, help="made-up items per pass (default 16)")
    parser.add_argument("--batch", type=int, default=8, help="items per backbone call (default 8)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per measurement (default 5)")
    parser.add_argument("--threads", type=int, help="intra-op threads of every session (default: PyTorch's)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--run", type=Path, help="a trained run: its export's user encoder, and its test NDCG@10")
    source.add_argument(
        "--preset",
        default="crossan-tiva",
        choices=list_models(),
        metavar="NAME",
        help="preset to build with random weights when --run is not given (default crossan-tiva)",
    )
    parser.add_argument(
        "--export",
        type=Path,
        help="with --run: its export, written with --optimize --quantize int8 (default <run>/export)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    if args.export is not None and args.run is None:
        raise ConfigError("--export names the export of --run: give --run DIR")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    results: dict[str, Any] = {"backbones": {}}
    for modality in args.modalities:
        with tempfile.TemporaryDirectory() as tmp:
            results["backbones"][modality] = measure_backbone(modality, args, threads, Path(tmp))
    if args.run is not None:
        export_dir = args.export or args.run / "export"
        run = open_run(args.run)
        user_spec = user_encoder_spec(run.model)
        results["user_encoder"] = measure_user_encoder(
            export_dir, user_spec, run.model.item_embedding_width, threads, args.repeats
        )
        results["user_encoder_source"] = f"export of {args.run}"
        results["ranking"] = run_ranking(run, export_dir, threads)
        results["ranking_source"] = f"{args.run}, test split"
    else:
        with tempfile.TemporaryDirectory() as tmp:
            item_spec, user_spec, model = random_model_files(args, Path(tmp))
            results["user_encoder"] = measure_user_encoder(
                Path(tmp), user_spec, model.item_embedding_width, threads, args.repeats
            )
            results["ranking"] = sampled_ranking(Path(tmp), item_spec, user_spec, model, threads)
        results["user_encoder_source"] = results["ranking_source"] = f"{args.preset}, random weights"
    results["details"] = {
        "cpu": cpu_name(),
        "threads": threads,
        "widths": args.widths,
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
    }
    if args.json:
        print(json.dumps(results, indent=1))
        return 0
    print_tables(results, args, threads)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
