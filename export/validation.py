"""Check exported encoders against the PyTorch model: names, then shapes, then values, then rankings.

Every check raises its own `ExportValidationError` subclass on the first failure; nothing
here logs a failure and carries on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from crossan.export.errors import (
    NameMismatchError,
    NonFiniteOutputError,
    RecommendationMismatchError,
    ShapeMismatchError,
    ValueMismatchError,
)
from crossan.export.providers import exact_float32
from crossan.export.ranking import history_window, non_finite_rows, top_k_rows
from crossan.export.reading import describe
from crossan.export.spec import ExportSpec

__all__ = [
    "VALIDATION_BATCH_SIZES",
    "VALIDATION_LENGTHS",
    "Case",
    "Encoder",
    "TorchEncoder",
    "OnnxEncoder",
    "TorchScriptEncoder",
    "GridResult",
    "AgreementResult",
    "item_cases",
    "user_cases",
    "check_finite",
    "validate_encoder",
    "catalogue_embeddings",
    "recommend",
    "check_agreement",
]

VALIDATION_BATCH_SIZES = (1, 3, 17)
VALIDATION_LENGTHS = (1, 4, 10)

Case = tuple[str, tuple[torch.Tensor, ...]]
"""A labelled set of encoder inputs, e.g. `("B=3 T=4", (item_embeddings, padding_mask))`."""


class Encoder(Protocol):
    """One encoder in one runtime: takes the spec's inputs in order, returns its outputs."""

    spec: ExportSpec
    runtime: str

    def check_signature(self) -> None: ...

    def __call__(self, *inputs: torch.Tensor) -> list[np.ndarray]: ...


class TorchEncoder:
    """The eager PyTorch module, the reference every export is compared with."""

    runtime = "pytorch"

    def __init__(self, module: nn.Module, spec: ExportSpec) -> None:
        self.module = module.eval()
        self.spec = spec

    def check_signature(self) -> None:
        """Nothing to check: the spec was derived from this module."""

    @torch.no_grad()
    def __call__(self, *inputs: torch.Tensor) -> list[np.ndarray]:
        output = self.module(*inputs)
        outputs = output if isinstance(output, (tuple, list)) else (output,)
        return [o.detach().cpu().numpy() for o in outputs]


class OnnxEncoder:
    """An exported `.onnx` encoder in an onnxruntime session on one execution provider."""

    def __init__(self, path: Path, spec: ExportSpec, provider: str = "CPUExecutionProvider") -> None:
        self.session = ort.InferenceSession(str(path), providers=[exact_float32(provider)])
        used = self.session.get_providers()[0]
        if used != provider:
            raise RuntimeError(f"onnxruntime fell back from {provider} to {used}")
        self.spec = spec
        self.provider = provider
        self.runtime = f"onnxruntime {provider.removesuffix('ExecutionProvider')}"

    def check_signature(self) -> None:
        """Input and output names as in the spec, and every dynamic axis symbolic in the graph."""
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        for kind, found, expected in (
            ("input", inputs, self.spec.input_names),
            ("output", outputs, self.spec.output_names),
        ):
            names = tuple(arg.name for arg in found)
            if names != expected:
                raise NameMismatchError(f"{self.spec.name}: ONNX {kind} names {names}, spec {expected}")
        for arg in (*inputs, *outputs):
            for index, axis in self.spec.dynamic_axes.get(arg.name, {}).items():
                if not isinstance(arg.shape[index], str):
                    raise ShapeMismatchError(
                        f"{self.spec.name}: axis {index} ({axis}) of {arg.name} is fixed to "
                        f"{arg.shape[index]} in the graph (shape {arg.shape}), spec says dynamic"
                    )

    def __call__(self, *inputs: torch.Tensor) -> list[np.ndarray]:
        feed = {name: tensor.cpu().numpy() for name, tensor in zip(self.spec.input_names, inputs, strict=True)}
        return self.session.run(list(self.spec.output_names), feed)


class TorchScriptEncoder:
    """A saved TorchScript encoder, loaded back with `torch.jit.load`."""

    runtime = "torchscript"

    def __init__(self, path: Path, spec: ExportSpec) -> None:
        self.module = torch.jit.load(str(path), map_location="cpu")
        self.spec = spec

    def check_signature(self) -> None:
        """TorchScript keeps no input names, so the number of inputs is what can be checked."""
        count = len(list(self.module.graph.inputs())) - 1  # the first graph input is the module itself
        if count != len(self.spec.input_names):
            raise NameMismatchError(
                f"{self.spec.name}: TorchScript takes {count} inputs, "
                f"spec names {len(self.spec.input_names)} {self.spec.input_names}"
            )

    @torch.no_grad()
    def __call__(self, *inputs: torch.Tensor) -> list[np.ndarray]:
        output = self.module(*inputs)
        outputs = output if isinstance(output, (tuple, list)) else (output,)
        return [o.cpu().numpy() for o in outputs]


@dataclass
class GridResult:
    """Max abs error of one exported encoder at every validation case."""

    encoder: str
    runtime: str
    tolerance: float
    errors: dict[str, float] = field(default_factory=dict)

    @property
    def max_abs_error(self) -> float:
        return max(self.errors.values(), default=0.0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "encoder": self.encoder,
            "runtime": self.runtime,
            "tolerance": self.tolerance,
            "max_abs_error": self.max_abs_error,
            "cases": self.errors,
        }


def check_finite(output: np.ndarray, where: str, name: str, rows: str, first: int = 0, cause: str = "") -> None:
    """Raise `NonFiniteOutputError` naming the graph and runtime (`where`), the output `name` and
    which of its rows hold NaN or inf (`rows` says what they are, e.g. "catalogue rows"; the
    first is number `first`)."""
    bad = non_finite_rows(output)
    if len(bad):
        raise NonFiniteOutputError(
            f"{where}: output {name} is NaN or infinite in {len(bad)} {rows} "
            f"({describe((bad + first).tolist())})" + (f": {cause}" if cause else "")
        )


def validate_encoder(candidate: Encoder, reference: TorchEncoder, cases: Sequence[Case]) -> GridResult:
    """Compare `candidate` with `reference` at every case: signature first, then per case the
    number of outputs, their shapes and dtypes, finiteness and the max abs error."""
    spec = candidate.spec
    candidate.check_signature()
    result = GridResult(spec.name, candidate.runtime, spec.tolerance)
    for label, inputs in cases:
        expected, actual = reference(*inputs), candidate(*inputs)
        where = f"{spec.name} in {candidate.runtime} at {label}"
        if len(actual) != len(spec.output_names):
            raise NameMismatchError(f"{where}: {len(actual)} outputs, spec names {spec.output_names}")
        worst = 0.0
        for name, want, got in zip(spec.output_names, expected, actual, strict=True):
            if got.shape != want.shape or got.dtype != want.dtype:
                raise ShapeMismatchError(
                    f"{where}: {name} is {got.dtype}{list(got.shape)}, PyTorch gives {want.dtype}{list(want.shape)}"
                )
            check_finite(
                want,
                f"{spec.name} in {reference.runtime} at {label}",
                name,
                "rows",
                cause="the run's model itself is not finite",
            )
            check_finite(got, where, name, "rows")
            error = float(np.abs(got.astype(np.float64) - want.astype(np.float64)).max(initial=0.0))
            if error > spec.tolerance:
                raise ValueMismatchError(f"{where}: {name} max abs error {error:.3g} > tolerance {spec.tolerance:g}")
            worst = max(worst, error)
        result.errors[label] = worst
    return result


def item_cases(
    sample_items: Callable[[int], tuple[torch.Tensor, ...]], batch_sizes: Sequence[int] = VALIDATION_BATCH_SIZES
) -> list[Case]:
    """Item-encoder cases; `sample_items(B)` returns the inputs of B items (real cached states
    when validating a run)."""
    return [(f"B={b}", sample_items(b)) for b in batch_sizes]


def user_cases(
    item_table: torch.Tensor,
    max_len: int,
    seed: int = 0,
    batch_sizes: Sequence[int] = VALIDATION_BATCH_SIZES,
    lengths: Sequence[int] = VALIDATION_LENGTHS,
) -> list[Case]:
    """User-encoder cases: sequences of rows of `item_table [N, D]`, left-padded to random
    lengths; the first sequence of each case is padded but for its last item. Padded positions
    keep their rows' embeddings, as in serving: the encoder must ignore them under the mask.

    Lengths above `max_len` are dropped (the model has no positions for them).
    """
    generator = torch.Generator().manual_seed(seed)
    cases: list[tuple[str, tuple[torch.Tensor, ...]]] = []
    for length in (t for t in lengths if t <= max_len):
        for batch in batch_sizes:
            rows = torch.randint(0, item_table.shape[0], (batch, length), generator=generator)
            kept = torch.randint(1, length + 1, (batch,), generator=generator)
            kept[0] = 1
            padding_mask = torch.arange(length) < (length - kept).unsqueeze(1)
            cases.append((f"B={batch} T={length}", (item_table[rows].float(), padding_mask)))
    return cases


def catalogue_embeddings(
    item_encoder: Encoder,
    gather: Callable[[torch.Tensor], tuple[torch.Tensor, ...]],
    num_items: int,
    batch_size: int = 1024,
) -> np.ndarray:
    """Embeddings `[num_items, D]` of every catalogue row, from `gather(rows)` inputs; NaN or inf
    in any row raises `NonFiniteOutputError`."""
    chunks = [
        item_encoder(*gather(torch.arange(start, min(start + batch_size, num_items))))[0]
        for start in range(0, num_items, batch_size)
    ]
    table = np.concatenate(chunks).astype(np.float32)
    spec = item_encoder.spec
    check_finite(table, f"{spec.name} in {item_encoder.runtime}", spec.output_names[0], "catalogue rows")
    return table


def recommend(
    user_encoder: Encoder,
    item_table: np.ndarray,
    histories: Sequence[np.ndarray],
    max_len: int,
    k: int = 10,
    batch_size: int = 512,
) -> list[np.ndarray]:
    """Top-`k` catalogue rows per history (1-based item indices), history items excluded; the
    user encoder gets `item_table` rows and the padding mask, as in serving. A user vector with
    NaN or inf raises `NonFiniteOutputError` naming the users (positions in `histories`)."""
    table = np.ascontiguousarray(item_table, dtype=np.float32)
    spec = user_encoder.spec
    ranked: list[np.ndarray] = []
    for start in range(0, len(histories), batch_size):
        batch = histories[start : start + batch_size]
        rows, padding_mask = history_window(batch, max_len)
        (user_vectors,) = user_encoder(torch.from_numpy(table[rows]), torch.from_numpy(padding_mask))
        check_finite(user_vectors, f"{spec.name} in {user_encoder.runtime}", spec.output_names[0], "users", start)
        ranked += top_k_rows(user_vectors, item_table, batch, k)
    return ranked


@dataclass
class AgreementResult:
    """How many users get the same top-k list (same items, same order) as from PyTorch; `near_ties`
    more differ only where PyTorch's scores of the swapped items are within the tie tolerance."""

    runtime: str
    k: int
    num_users: int
    agreeing: int
    near_ties: int = 0
    tie_tolerance: float = 0.0

    @property
    def fraction(self) -> float:
        return self.agreeing / self.num_users if self.num_users else 1.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "runtime": self.runtime,
            "k": self.k,
            "num_users": self.num_users,
            "agreeing": self.agreeing,
            "fraction": self.fraction,
            "near_ties": self.near_ties,
            "tie_tolerance": self.tie_tolerance,
        }


def check_agreement(
    reference: Sequence[np.ndarray],
    candidate: Sequence[np.ndarray],
    runtime: str,
    k: int = 10,
    reference_scores: Callable[[list[int]], np.ndarray] | None = None,
    tie_tolerance: float = 0.0,
) -> AgreementResult:
    """Raise `RecommendationMismatchError` unless every user's top-k list is identical.

    With `reference_scores(users) -> [len(users), N]` (PyTorch's scores of every catalogue row) a
    list may also differ where the two items at each differing position score within
    `tie_tolerance` of each other in PyTorch: a near-tie that a perturbation of that size may
    reorder (used when items are re-embedded through the float16 feature cache).
    """
    if len(reference) != len(candidate):
        raise RecommendationMismatchError(f"{runtime}: {len(candidate)} users ranked, PyTorch ranked {len(reference)}")
    differing = [u for u, (a, b) in enumerate(zip(reference, candidate, strict=True)) if not np.array_equal(a, b)]
    near_ties: list[int] = []
    if differing and reference_scores is not None:
        for user, scores in zip(differing, reference_scores(differing), strict=True):
            a, b = reference[user], candidate[user]
            if len(a) == len(b) and np.all(np.abs(scores[a] - scores[b]) <= tie_tolerance):
                near_ties.append(user)
    result = AgreementResult(runtime, k, len(reference), len(reference) - len(differing), len(near_ties), tie_tolerance)
    unexplained = [u for u in differing if u not in set(near_ties)]
    if unexplained:
        first = unexplained[0]
        raise RecommendationMismatchError(
            f"{runtime}: top-{k} differs from PyTorch for {len(unexplained)} of {len(reference)} users; "
            f"user {first}: PyTorch {reference[first].tolist()}, {runtime} {candidate[first].tolist()}"
        )
    return result
