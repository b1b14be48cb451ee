"""Tests for crossan.kernels.gated_mix_down (one side layer, all towers): the Triton path against the
PyTorch reference, the reference against a naive loop and gradcheck, dispatch and input errors.

Without a GPU the Triton kernels run in the Triton interpreter on CPU tensors. The variable
is set here, before the kernels are first used; the kernels module wraps its kernels at first
use and calls no jit helpers of triton.language, so this holds even when modules collected
earlier imported `kernels` or triton itself. Export TRITON_INTERPRET=0 on a CUDA machine to
run the same comparisons compiled on the GPU.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import math

import pytest
import torch
import torch.nn.functional as F

import crossan.kernels.gated_mix_down as kernel_module
from crossan.kernels.gated_mix_down import gated_mix_down, triton_available
from crossan.kernels.reference import gated_mix_down_reference

INTERPRET = os.environ["TRITON_INTERPRET"] == "1"
DEVICE = "cpu" if INTERPRET else "cuda"
needs_triton = pytest.mark.skipif(
    not triton_available() or (not INTERPRET and not torch.cuda.is_available()),
    reason="needs triton and either TRITON_INTERPRET=1 or a CUDA device",
)

# (dtype, atol, rtol) for elementwise results. Sums over n terms (grad_w, grad_b over N rows,
# grad_logits over N x W) get atol * sqrt(n): rounding error of a sum grows like sqrt(n).
DTYPE_TOLERANCES = [
    pytest.param(torch.float32, 1e-5, 1e-5, id="fp32"),
    pytest.param(torch.float16, 1e-2, 1e-2, id="fp16"),
    pytest.param(
        torch.bfloat16,
        3e-2,
        3e-2,
        id="bf16",
        marks=pytest.mark.skipif(INTERPRET, reason="the Triton interpreter mishandles bf16 (raw bits)"),
    ),
]

# (M, T, N, W, r): together M, T in {1, 2, 3, 4}, N in {1, 37, 129, 257}, W in {48, 200, 768}
# and r in {8, 100, 130, 512, 1024}, with r both below one tile and spanning many, W with a
# partial last chunk, and cases with many row blocks, W chunks and r blocks at once (the
# interpreter tile is 32 x 64 x 64). Not the full product: the interpreter is slow.
SHAPES = [
    pytest.param(2, 2, 37, 48, 8, id="small"),
    pytest.param(1, 2, 1, 200, 1024, id="one_row_wide_r"),
    pytest.param(4, 4, 257, 48, 100, id="many_row_blocks"),
    pytest.param(2, 3, 37, 768, 130, id="many_w_chunks"),
    pytest.param(3, 4, 129, 48, 512, id="row_and_r_blocks"),
]

# Which sources each tower reads, for T towers over M modalities (columns: M states, T outputs).
PATTERNS = {
    "dense": lambda m, t: None,
    "crossan": lambda m, t: torch.cat([torch.eye(t, m, dtype=torch.bool), torch.ones(t, t, dtype=torch.bool)], 1),
    "indsan": lambda m, t: torch.cat([torch.eye(t, m, dtype=torch.bool), torch.eye(t, dtype=torch.bool)], 1),
}


def assert_close(name: str, actual: torch.Tensor, expected: torch.Tensor, atol: float, rtol: float) -> None:
    """Elementwise |actual - expected| <= atol + rtol |expected|; on failure name the worst
    element (index, both values), the largest absolute difference and how many fail."""
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    a, e = actual.detach().double().cpu(), expected.detach().double().cpu()
    diff = (a - e).abs()
    allowed = atol + rtol * e.abs()
    bad = ~(diff <= allowed)  # also catches NaN
    if bad.any():
        worst = int(torch.argmax(torch.where(bad, diff - allowed, torch.zeros_like(diff)).nan_to_num(math.inf)))
        worst_index = tuple(int(i) for i in torch.unravel_index(torch.tensor(worst), e.shape))
        largest = int(torch.argmax(diff.nan_to_num(math.inf)))
        largest_index = tuple(int(i) for i in torch.unravel_index(torch.tensor(largest), e.shape))
        raise AssertionError(
            f"{name}: {int(bad.sum())} of {e.numel()} elements outside atol={atol:g}, rtol={rtol:g}; "
            f"worst at {worst_index}: actual {a.flatten()[worst].item():.6g}, expected "
            f"{e.flatten()[worst].item():.6g}; max abs diff {diff.flatten()[largest].item():.3g} at "
            f"{largest_index}"
        )


def make_inputs(
    m: int,
    t: int,
    n: int,
    width: int,
    rank: int,
    dtype: torch.dtype,
    with_previous: bool = True,
    states_requires_grad: bool = True,
    seed: int = 0,
) -> list:
    """Random leaves on DEVICE: states [M, N, W], previous [T, N, W] (or None), mixing [T, M + T]
    fp32 (rows of a softmax), w_down [T, W, r], b_down [T, r]."""
    gen = torch.Generator().manual_seed(seed)
    states = torch.randn(m, n, width, generator=gen)
    previous = torch.randn(t, n, width, generator=gen)
    mixing = torch.softmax(torch.randn(t, m + t, generator=gen), dim=1)
    w_down = torch.randn(t, width, rank, generator=gen) / math.sqrt(width)
    b_down = 0.1 * torch.randn(t, rank, generator=gen)
    return [
        states.to(DEVICE, dtype).requires_grad_(states_requires_grad),
        previous.to(DEVICE, dtype).requires_grad_() if with_previous else None,
        mixing.to(DEVICE).requires_grad_(),
        w_down.to(DEVICE, dtype).requires_grad_(),
        b_down.to(DEVICE, dtype).requires_grad_(),
    ]


def outputs_and_grads(fn, inputs, grad_x, grad_h, **kwargs):
    """Run fn, backpropagate the given output grads (None: that output is unused) and return
    (x, h, grads): zeros for inputs the outputs do not depend on, None for absent or frozen inputs."""
    x, h = fn(*inputs, **kwargs)
    pairs = [(out, grad) for out, grad in ((x, grad_x), (h, grad_h)) if grad is not None]
    wrt = [t for t in inputs if t is not None and t.requires_grad]
    grads = iter(
        torch.autograd.grad(
            [out for out, _ in pairs], wrt, [grad for _, grad in pairs], allow_unused=True, materialize_grads=True
        )
    )
    return x, h, [next(grads) if t is not None and t.requires_grad else None for t in inputs]


def compare_with_reference(inputs, activation, atol, rtol, pattern=None, use_x=True, use_h=True, seed=1):
    """Triton path vs reference on x, h and every gradient, with the sqrt(n) rule for sums."""
    states, _, _, w_down, _ = inputs
    num_towers, width, rank = w_down.shape
    n = states.shape[1]
    gen = torch.Generator().manual_seed(seed)
    grad_x = torch.randn(num_towers, n, width, generator=gen).to(DEVICE, states.dtype) if use_x else None
    grad_h = torch.randn(num_towers, n, rank, generator=gen).to(DEVICE, states.dtype) if use_h else None
    options = dict(activation=activation, pattern=pattern)
    x, h, grads = outputs_and_grads(gated_mix_down, inputs, grad_x, grad_h, backend="triton", **options)
    x_ref, h_ref, grads_ref = outputs_and_grads(gated_mix_down_reference, inputs, grad_x, grad_h, **options)

    assert x.dtype == x_ref.dtype == states.dtype and h.dtype == h_ref.dtype == states.dtype
    assert_close("x", x, x_ref, atol, rtol)
    assert_close("h", h, h_ref, atol, rtol)
    names = ("grad states", "grad previous", "grad mixing", "grad w_down", "grad b_down")
    # Terms summed into one element: sources over towers, mixing over N x W, weights and biases over N.
    summed_terms = (num_towers, num_towers, n * width, n, n)
    for name, terms, got, want in zip(names, summed_terms, grads, grads_ref, strict=True):
        if want is None:
            assert got is None, f"{name}: expected no gradient"
            continue
        assert got.dtype == want.dtype, f"{name}: dtype {got.dtype} != {want.dtype}"
        assert_close(name, got, want, atol * math.sqrt(terms), rtol)


# ------------------------------------------------------------------------------------------
# Triton path vs reference
# ------------------------------------------------------------------------------------------


# Every shape past the smallest takes seconds under the interpreter. The default run checks each
# of them once per dtype and once per activation (fp32 with relu, fp16 with gelu; the block-tiling
# shapes in fp32 with relu only), the small shape in every combination, and the slow set all.
TILING_SHAPES = {"many_w_chunks", "row_and_r_blocks"}


def in_default_run(shape: str, dtype: str, activation: str) -> bool:
    if shape == "small":
        return True
    pairs = {("fp32", "relu")} if shape in TILING_SHAPES else {("fp32", "relu"), ("fp16", "gelu")}
    return (dtype, activation) in pairs


def kernel_cases() -> list:
    cases = []
    for shape in SHAPES:
        for dtype in DTYPE_TOLERANCES:
            for activation in ("relu", "gelu"):
                slow = not in_default_run(shape.id, dtype.id, activation)
                cases.append(
                    pytest.param(
                        *shape.values,
                        *dtype.values,
                        activation,
                        id=f"{shape.id}-{dtype.id}-{activation}",
                        marks=[*shape.marks, *dtype.marks, *([pytest.mark.slow] if slow else [])],
                    )
                )
    return cases


@needs_triton
@pytest.mark.parametrize("m, t, n, width, rank, dtype, atol, rtol, activation", kernel_cases())
def test_triton_matches_reference(m, t, n, width, rank, dtype, atol, rtol, activation):
    inputs = make_inputs(m, t, n, width, rank, dtype)
    compare_with_reference(inputs, activation, atol, rtol, pattern=PATTERNS["crossan"](m, t))


@needs_triton
@pytest.mark.parametrize("pattern_name", sorted(PATTERNS))
@pytest.mark.parametrize("with_previous", [True, False], ids=["previous", "first_layer"])
def test_triton_patterns_and_first_layer(pattern_name, with_previous):
    """Every pattern, with previous outputs and without (the first side layer, Z = 0)."""
    inputs = make_inputs(3, 3, 37, 48, 100, torch.float32, with_previous=with_previous)
    compare_with_reference(inputs, "gelu", 1e-5, 1e-5, pattern=PATTERNS[pattern_name](3, 3))


@needs_triton
@pytest.mark.parametrize("dtype, atol, rtol", DTYPE_TOLERANCES)
def test_triton_states_without_grad(dtype, atol, rtol):
    """Frozen states (cached backbone outputs): no grad_states, the rest still flows."""
    inputs = make_inputs(3, 2, 37, 48, 100, dtype, states_requires_grad=False)
    compare_with_reference(inputs, "relu", atol, rtol, pattern=PATTERNS["indsan"](3, 2))


@needs_triton
@pytest.mark.parametrize(("use_x", "use_h"), [(False, True), (True, False)], ids=["h_only", "x_only"])
def test_triton_one_output_unused(use_x, use_h):
    """An unused output reaches backward as None; both kernel branches must handle it."""
    inputs = make_inputs(2, 2, 37, 48, 100, torch.float32)
    compare_with_reference(inputs, "gelu", 1e-5, 1e-5, use_x=use_x, use_h=use_h)


@needs_triton
def test_triton_reads_states_where_they_live():
    """States as a layer slice of a layer-major [L, M, N, W] batch and of a permuted [N, L, M, W]
    cache layout, down weights as stored ([T, W, r]) and transposed from [T, r, W], without copies."""
    gen = torch.Generator().manual_seed(3)
    batch = torch.randn(37, 7, 3, 48, generator=gen).to(DEVICE)  # [N, L, M, W]
    states = batch.permute(1, 2, 0, 3)[2].requires_grad_()  # [M, N, W], non-contiguous
    stored = (torch.randn(2, 100, 48, generator=gen) / math.sqrt(48)).to(DEVICE).requires_grad_()
    w_down = stored.mT  # [T, W, r] view of [T, r, W]
    previous = torch.randn(2, 37, 48, generator=gen).to(DEVICE).requires_grad_()
    mixing = torch.softmax(torch.randn(2, 5, generator=gen), 1).to(DEVICE).requires_grad_()
    b_down = torch.zeros(2, 100, device=DEVICE, requires_grad=True)
    assert not states.is_contiguous() and not w_down.is_contiguous()
    leaves = (states, previous, mixing, stored, b_down)
    x, h = gated_mix_down(states, previous, mixing, w_down, b_down, backend="triton")
    x_ref, h_ref = gated_mix_down_reference(states, previous, mixing, w_down, b_down)
    assert_close("x", x, x_ref, 1e-5, 1e-5)
    assert_close("h", h, h_ref, 1e-5, 1e-5)
    grads = torch.autograd.grad(h.sum() + x.sum(), leaves)
    grads_ref = torch.autograd.grad(h_ref.sum() + x_ref.sum(), leaves)
    for name, terms, got, want in zip(
        ("states", "previous", "mixing", "w_down", "b_down"), (2, 2, 37 * 48, 37, 37), grads, grads_ref, strict=True
    ):
        assert_close(f"grad {name}", got, want, 1e-5 * math.sqrt(terms), 1e-5)


@needs_triton
def test_triton_zero_rows():
    inputs = make_inputs(2, 2, 0, 48, 8, torch.float32)
    x, h = gated_mix_down(*inputs, backend="triton")
    assert x.shape == (2, 0, 48) and h.shape == (2, 0, 8)
    grads = torch.autograd.grad(h.sum() + x.sum(), inputs)
    assert all(g is not None and not g.any() for g in grads)


@needs_triton
def test_kernels_are_wrapped_for_the_current_mode():
    """The kernels follow TRITON_INTERPRET at first use, not at import of the module."""
    wrapped = kernel_module._kernels().forward.fn
    assert (type(wrapped).__name__ == "InterpretedFunction") == INTERPRET


@pytest.mark.skipif(not triton_available(), reason="needs triton")
@pytest.mark.parametrize(("rank", "block_r"), [(8, 64), (100, 128), (512, 512), (1024, 512), (8192, 512)])
def test_cuda_forward_tiles_cover_r_up_to_512(rank, block_r):
    """The autotuner keeps only forward tiles whose BLOCK_R covers r (at most 512), so sources
    are read once per output tile up to r = 512 (module docstring); every r keeps some tile."""
    kept = kernel_module._keep_full_r_tiles(kernel_module._cuda_forward_configs(), {"rank": rank})
    assert kept and {config.kwargs["BLOCK_R"] for config in kept} == {block_r}


COMPILE_SCRIPT = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

import crossan.kernels.gated_mix_down as module
for dt in ("fp16", "bf16", "fp32"):
    for raw, pointers, constants in [
        (module._gated_mix_down_fwd_kernel, ["*" + dt] * 2 + ["*fp32", "*i32"] + ["*" + dt] * 4,
         dict(NUM_MODALITIES=4, NUM_TOWERS=5, HAS_PREVIOUS=True, ACTIVATION="gelu",
              BLOCK_N=32, BLOCK_R=512, BLOCK_W=32)),
        (module._gated_mix_down_bwd_kernel, ["*" + dt] * 5 + ["*i32", "*fp32", "*fp32"],
         dict(NUM_MODALITIES=4, NUM_TOWERS=5, HAS_GRAD_X=True, HAS_PREVIOUS=True,
              BLOCK_N=64, BLOCK_W=64, BLOCK_R=32)),
    ]:
        fn = triton.jit(raw)
        ptrs = iter(pointers)
        signature = {name: "constexpr" if name in constants else next(ptrs) if name.endswith("_ptr") else "i32"
                     for name in fn.arg_names}
        triton.compile(ASTSource(fn, signature, constants), target=GPUTarget("cuda", 90, 32),
                       options={"num_warps": 8, "num_stages": 2})
"""


@pytest.mark.skipif(not triton_available(), reason="needs triton")
def test_kernels_compile_for_cuda():
    """The interpreter never runs Triton's compiler; compile both kernels for sm_90 (H100) in a
    process without TRITON_INTERPRET, so compiled-only errors show on CPU-only machines too."""
    import subprocess
    import sys
    from pathlib import Path

    import triton

    if not (Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas").exists():
        pytest.skip("triton's bundled ptxas is missing")
    root = Path(__file__).resolve().parents[1]
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    result = subprocess.run(
        [sys.executable, "-c", COMPILE_SCRIPT], cwd=root, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, f"Triton compilation for sm_90 failed:\n{result.stderr[-4000:]}"


# ------------------------------------------------------------------------------------------
# The reference itself
# ------------------------------------------------------------------------------------------


def naive_gated_mix_down(states, previous, mixing, w_down, b_down, activation, pattern):
    """Loops over towers, rows, sources and columns in float64: the definition, written out."""
    num_modalities, n, width = states.shape
    num_towers, _, rank = w_down.shape
    sources = [states[j] for j in range(num_modalities)] + [
        previous[k] if previous is not None else torch.zeros(n, width, dtype=torch.float64) for k in range(num_towers)
    ]
    x = torch.zeros(num_towers, n, width, dtype=torch.float64)
    h = torch.zeros(num_towers, n, rank, dtype=torch.float64)
    for t in range(num_towers):
        for row in range(n):
            for j, source in enumerate(sources):
                if pattern is None or pattern[t, j]:
                    x[t, row] += float(mixing[t, j]) * source[row].double()
            for c in range(rank):
                pre = float(b_down[t, c]) + sum(float(x[t, row, i]) * float(w_down[t, i, c]) for i in range(width))
                h[t, row, c] = (
                    max(pre, 0.0) if activation == "relu" else 0.5 * pre * (1.0 + math.erf(pre / math.sqrt(2.0)))
                )
    return x, h


@pytest.mark.parametrize("with_previous", [True, False])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_reference_matches_naive_loop(activation, with_previous):
    gen = torch.Generator().manual_seed(4)
    states = torch.randn(2, 3, 5, generator=gen, dtype=torch.float64)
    previous = torch.randn(3, 3, 5, generator=gen, dtype=torch.float64) if with_previous else None
    mixing = torch.randn(3, 5, generator=gen, dtype=torch.float64)
    w_down = torch.randn(3, 5, 4, generator=gen, dtype=torch.float64)
    b_down = torch.randn(3, 4, generator=gen, dtype=torch.float64)
    pattern = torch.rand(3, 5, generator=gen) > 0.4
    x, h = gated_mix_down_reference(states, previous, mixing, w_down, b_down, activation, pattern)
    x_naive, h_naive = naive_gated_mix_down(states, previous, mixing, w_down, b_down, activation, pattern)
    assert_close("x", x, x_naive, 1e-12, 1e-12)
    assert_close("h", h, h_naive, 1e-12, 1e-12)


def test_reference_pattern_ignores_and_does_not_train_entries_outside_it():
    gen = torch.Generator().manual_seed(7)
    states, previous = torch.randn(2, 4, 6, generator=gen), torch.randn(2, 4, 6, generator=gen)
    mixing = torch.randn(2, 4, generator=gen).requires_grad_()
    w_down, b_down = torch.randn(2, 6, 3, generator=gen), torch.zeros(2, 3)
    pattern = PATTERNS["indsan"](2, 2)
    x, _ = gated_mix_down_reference(states, previous, mixing, w_down, b_down, pattern=pattern)
    masked = mixing.detach().masked_fill(~pattern, 0.0)
    x_masked, _ = gated_mix_down_reference(states, previous, masked, w_down, b_down)
    assert torch.equal(x, x_masked)
    (grad,) = torch.autograd.grad(x.sum(), mixing)
    assert not grad[~pattern].any() and grad[pattern].abs().min() > 0


def test_reference_rows_of_ones_copy_and_uniform_rows_average():
    """A one-hot mixing row copies its source; a uniform row over sources gives their mean."""
    gen = torch.Generator().manual_seed(8)
    states, previous = torch.randn(2, 7, 16, generator=gen), torch.randn(2, 7, 16, generator=gen)
    w_down, b_down = torch.randn(2, 16, 8, generator=gen), torch.randn(2, 8, generator=gen)
    mixing = torch.tensor([[0.0, 0.0, 1.0, 0.0], [0.25, 0.25, 0.25, 0.25]])
    x, h = gated_mix_down_reference(states, previous, mixing, w_down, b_down)
    assert_close("copy", x[0], previous[0], 1e-6, 1e-6)
    assert_close("mean", x[1], torch.cat([states, previous]).mean(0), 1e-6, 1e-6)
    assert_close("h", h[0], F.relu(previous[0] @ w_down[0] + b_down[0]), 1e-5, 1e-5)


@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_reference_gradcheck(activation):
    gen = torch.Generator().manual_seed(5)
    inputs = (
        torch.randn(2, 4, 5, generator=gen, dtype=torch.float64),
        torch.randn(3, 4, 5, generator=gen, dtype=torch.float64),
        torch.randn(3, 5, generator=gen, dtype=torch.float64),
        torch.randn(3, 5, 6, generator=gen, dtype=torch.float64),
        torch.randn(3, 6, generator=gen, dtype=torch.float64),
    )
    inputs = tuple(t.requires_grad_() for t in inputs)
    assert torch.autograd.gradcheck(
        lambda *args: gated_mix_down_reference(*args, activation=activation), inputs, eps=1e-6, atol=1e-6
    )


# ------------------------------------------------------------------------------------------
# Dispatch and errors
# ------------------------------------------------------------------------------------------


def cpu_inputs(m=3, t=2, n=5, width=8, rank=4):
    gen = torch.Generator().manual_seed(6)
    return [
        torch.randn(m, n, width, generator=gen),
        torch.randn(t, n, width, generator=gen),
        torch.randn(t, m + t, generator=gen),
        torch.randn(t, width, rank, generator=gen),
        torch.randn(t, rank, generator=gen),
    ]


@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_auto_on_cpu_is_the_reference(monkeypatch, activation):
    def no_triton(*args, **kwargs):
        raise AssertionError("backend='auto' launched the Triton kernel for CPU tensors")

    monkeypatch.setattr(kernel_module, "_launch_forward", no_triton)
    inputs = cpu_inputs()
    for backend in ("auto", "torch"):
        x, h = gated_mix_down(*inputs, activation=activation, backend=backend)
        x_ref, h_ref = gated_mix_down_reference(*inputs, activation=activation)
        assert torch.equal(x, x_ref) and torch.equal(h, h_ref)


def test_autocast_casts_fp32_parameters():
    states, previous, mixing, w_down, b_down = cpu_inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x, h = gated_mix_down(states, previous, mixing, w_down, b_down)
    x_ref, h_ref = gated_mix_down_reference(
        states.bfloat16(), previous.bfloat16(), mixing, w_down.bfloat16(), b_down.bfloat16()
    )
    assert x.dtype == h.dtype == torch.bfloat16
    assert torch.equal(x, x_ref) and torch.equal(h, h_ref)


def test_triton_forced_on_cpu_without_interpreter(monkeypatch):
    monkeypatch.setattr(kernel_module, "_interpreter_enabled", lambda: False)
    if not triton_available():
        with pytest.raises(RuntimeError, match="triton package"):
            gated_mix_down(*cpu_inputs(), backend="triton")
        return
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        gated_mix_down(*cpu_inputs(), backend="triton")


@needs_triton
def test_triton_interpreter_rejects_bf16():
    if not INTERPRET:
        pytest.skip("only the interpreter refuses bf16")
    states, previous, mixing, w_down, b_down = cpu_inputs()
    with pytest.raises(RuntimeError, match="bfloat16"):
        gated_mix_down(
            states.bfloat16(), previous.bfloat16(), mixing, w_down.bfloat16(), b_down.bfloat16(), backend="triton"
        )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s, z, g, w, b: (s, z, g, w, b, "tanh", "auto"), "activation"),
        (lambda s, z, g, w, b: (s, z, g, w, b, "relu", "cuda"), "backend"),
        (lambda s, z, g, w, b: (s[0], z, g, w, b, "relu", "auto"), r"\[M, N, W\]"),
        (lambda s, z, g, w, b: (s, z[:, :2], g, w, b, "relu", "auto"), "previous"),
        (lambda s, z, g, w, b: (s, z, g[:, :-1], w, b, "relu", "auto"), "mixing"),
        (lambda s, z, g, w, b: (s, z, g, w[:, :-1], b, "relu", "auto"), "w_down"),
        (lambda s, z, g, w, b: (s, z, g, w[0], b, "relu", "auto"), "w_down"),
        (lambda s, z, g, w, b: (s, z, g, w, b[:, :-1], "relu", "auto"), "b_down"),
        (lambda s, z, g, w, b: (s, z, g, w.double(), b, "relu", "auto"), "dtype"),
        (lambda s, z, g, w, b: (s, z.half(), g, w, b, "relu", "auto"), "dtype"),
        (lambda s, z, g, w, b: (s, z, g.long(), w, b, "relu", "auto"), "floating point"),
    ],
    ids=[
        "activation",
        "backend",
        "states_rank",
        "previous_shape",
        "mixing_shape",
        "w_mismatch",
        "w_rank",
        "r_mismatch",
        "w_dtype",
        "previous_dtype",
        "integer_mixing",
    ],
)
def test_bad_inputs_raise_value_error(change, message):
    args = change(*cpu_inputs())
    with pytest.raises(ValueError, match=message):
        gated_mix_down(*args)
    if args[-1] == "auto":
        with pytest.raises(ValueError, match=message):
            gated_mix_down_reference(*args[:-1])


def test_bad_pattern_raises_value_error():
    inputs = cpu_inputs()
    with pytest.raises(ValueError, match="pattern"):
        gated_mix_down(*inputs, pattern=torch.ones(2, 5, dtype=torch.int64))
    with pytest.raises(ValueError, match="pattern"):
        gated_mix_down(*inputs, pattern=torch.ones(2, 4, dtype=torch.bool))
