"""Tests for kernels.gated_mix_down: the Triton path against the PyTorch reference, the
reference against a naive loop and gradcheck, dispatch and input errors.

Without a GPU the Triton kernels run in the Triton interpreter on CPU tensors. The variable
is set here, before the kernels are first used; the kernels module wraps its kernels at first
use and calls no jit helpers of triton.language, so this holds even when modules collected
earlier imported `kernels` or triton itself. Export TRITON_INTERPRET=0 on a CUDA machine to
run the same comparisons compiled on the GPU.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import importlib  # noqa: E402
import math  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from kernels import (  # noqa: E402
    GatedMixDown,
    gated_mix_down,
    gated_mix_down_reference,
    triton_available,
)

kernel_module = importlib.import_module("kernels.gated_mix_down")  # the attribute is the function

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

# (K, N, W, r): together every K in {2, 3, 5}, N in {1, 37, 513}, W in {48, 768} and
# r in {8, 100, 512, 1024}, with r both below one tile and spanning many, and one case with
# many row blocks, W chunks and r blocks at once (the interpreter tile is 32 x 64 x 64).
# Not the full product: the interpreter is slow.
SHAPES = [
    (2, 37, 48, 8),
    (3, 1, 768, 1024),
    (5, 513, 48, 100),
    (2, 37, 768, 512),
    (5, 513, 48, 512),
    (3, 513, 768, 100),
]


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
    k: int, n: int, width: int, rank: int, dtype: torch.dtype, states_requires_grad: bool = True, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random leaf tensors on DEVICE: states [K, N, W], logits [K] fp32, w_down [W, r], b_down [r]."""
    gen = torch.Generator().manual_seed(seed)
    states = torch.randn(k, n, width, generator=gen)
    logits = torch.randn(k, generator=gen)
    w_down = torch.randn(width, rank, generator=gen) / math.sqrt(width)
    b_down = 0.1 * torch.randn(rank, generator=gen)
    states = states.to(DEVICE, dtype).requires_grad_(states_requires_grad)
    logits = logits.to(DEVICE).requires_grad_()
    w_down = w_down.to(DEVICE, dtype).requires_grad_()
    b_down = b_down.to(DEVICE, dtype).requires_grad_()
    return states, logits, w_down, b_down


def outputs_and_grads(fn, inputs, grad_x, grad_h, **kwargs):
    """Run fn, backpropagate the given output grads (None: that output is unused) and return
    (x, h, grads): zeros for inputs the outputs do not depend on, None for frozen inputs."""
    x, h = fn(*inputs, **kwargs)
    pairs = [(out, grad) for out, grad in ((x, grad_x), (h, grad_h)) if grad is not None]
    wrt = [t for t in inputs if t.requires_grad]
    grads = iter(
        torch.autograd.grad(
            [out for out, _ in pairs], wrt, [grad for _, grad in pairs], allow_unused=True, materialize_grads=True
        )
    )
    return x, h, [next(grads) if t.requires_grad else None for t in inputs]


def compare_with_reference(inputs, activation, atol, rtol, use_x=True, use_h=True, seed=1):
    """Triton path vs reference on x, h and every gradient, with the sqrt(n) rule for sums."""
    states, _, w_down, _ = inputs
    _, n, width = states.shape
    gen = torch.Generator().manual_seed(seed)
    grad_x = torch.randn(n, width, generator=gen).to(DEVICE, states.dtype) if use_x else None
    grad_h = torch.randn(n, w_down.shape[1], generator=gen).to(DEVICE, states.dtype) if use_h else None

    x, h, grads = outputs_and_grads(gated_mix_down, inputs, grad_x, grad_h, activation=activation, backend="triton")
    x_ref, h_ref, grads_ref = outputs_and_grads(gated_mix_down_reference, inputs, grad_x, grad_h, activation=activation)

    assert x.dtype == x_ref.dtype == states.dtype and h.dtype == h_ref.dtype == states.dtype
    assert_close("x", x, x_ref, atol, rtol)
    assert_close("h", h, h_ref, atol, rtol)
    names = ("grad states", "grad gate_logits", "grad w_down", "grad b_down")
    summed_terms = (1, n * width, n, n)
    for name, terms, got, want in zip(names, summed_terms, grads, grads_ref):
        if want is None:
            assert got is None, f"{name}: expected no gradient"
            continue
        assert got.dtype == want.dtype, f"{name}: dtype {got.dtype} != {want.dtype}"
        assert_close(name, got, want, atol * math.sqrt(terms), rtol)


# ------------------------------------------------------------------------------------------
# Triton path vs reference
# ------------------------------------------------------------------------------------------


@needs_triton
@pytest.mark.parametrize("activation", ["relu", "gelu"])
@pytest.mark.parametrize("dtype, atol, rtol", DTYPE_TOLERANCES)
@pytest.mark.parametrize("k, n, width, rank", SHAPES)
def test_triton_matches_reference(k, n, width, rank, dtype, atol, rtol, activation):
    inputs = make_inputs(k, n, width, rank, dtype)
    compare_with_reference(inputs, activation, atol, rtol)


@needs_triton
@pytest.mark.parametrize("dtype, atol, rtol", DTYPE_TOLERANCES)
@pytest.mark.parametrize(("k", "n", "width", "rank", "activation"), [(3, 37, 48, 100, "gelu"), (5, 513, 48, 8, "relu")])
def test_triton_states_without_grad(k, n, width, rank, activation, dtype, atol, rtol):
    """Frozen states (e.g. cached backbone outputs): no grad_states, the rest still flows."""
    inputs = make_inputs(k, n, width, rank, dtype, states_requires_grad=False)
    compare_with_reference(inputs, activation, atol, rtol)


@needs_triton
@pytest.mark.parametrize(("use_x", "use_h"), [(False, True), (True, False)], ids=["h_only", "x_only"])
def test_triton_one_output_unused(use_x, use_h):
    """An unused output reaches backward as None; both kernel branches must handle it."""
    inputs = make_inputs(3, 37, 48, 100, torch.float32)
    compare_with_reference(inputs, "gelu", 1e-5, 1e-5, use_x=use_x, use_h=use_h)


@needs_triton
def test_triton_strided_inputs():
    """States sliced out of a [N, S, W] cache and w_down = linear.weight.T, without copies."""
    gen = torch.Generator().manual_seed(3)
    cache = torch.randn(37, 7, 48, generator=gen).to(DEVICE)
    states = cache.permute(1, 0, 2)[1:4].requires_grad_()  # [3, 37, 48], non-contiguous leaf view
    linear_weight = (torch.randn(100, 48, generator=gen) / math.sqrt(48)).to(DEVICE).requires_grad_()
    logits = torch.randn(3, generator=gen).to(DEVICE).requires_grad_()
    b_down = torch.zeros(100, device=DEVICE, requires_grad=True)
    assert not states.is_contiguous() and not linear_weight.t().is_contiguous()

    x, h = gated_mix_down(states, logits, linear_weight.t(), b_down, backend="triton")
    x_ref, h_ref = gated_mix_down_reference(states, logits, linear_weight.t(), b_down)
    assert_close("x", x, x_ref, 1e-5, 1e-5)
    assert_close("h", h, h_ref, 1e-5, 1e-5)
    grads = torch.autograd.grad(h.sum() + x.sum(), (states, linear_weight))
    grads_ref = torch.autograd.grad(h_ref.sum() + x_ref.sum(), (states, linear_weight))
    assert_close("grad states", grads[0], grads_ref[0], 1e-5, 1e-5)
    assert_close("grad linear weight", grads[1], grads_ref[1], 1e-5 * math.sqrt(37), 1e-5)


@needs_triton
def test_triton_zero_rows():
    states, logits, w_down, b_down = make_inputs(2, 0, 48, 8, torch.float32)
    x, h = gated_mix_down(states, logits, w_down, b_down, backend="triton")
    assert x.shape == (0, 48) and h.shape == (0, 8)
    grads = torch.autograd.grad(h.sum() + x.sum(), (states, logits, w_down, b_down))
    assert all(g is not None and not g.any() for g in grads)


@needs_triton
def test_kernels_are_wrapped_for_the_current_mode():
    """The kernels follow TRITON_INTERPRET at first use, not at import of the module."""
    wrapped = kernel_module._kernels().forward.fn
    assert (type(wrapped).__name__ == "InterpretedFunction") == INTERPRET


COMPILE_SCRIPT = """
import importlib
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

module = importlib.import_module("kernels.gated_mix_down")
for dt in ("fp16", "bf16", "fp32"):
    for raw, pointers, constants in [
        (module._gated_mix_down_fwd_kernel, ["*" + dt, "*fp32"] + ["*" + dt] * 4,
         dict(NUM_STATES=5, BLOCK_K=8, ACTIVATION="gelu", BLOCK_N=64, BLOCK_R=64, BLOCK_W=32)),
        (module._gated_mix_down_bwd_kernel, ["*" + dt] * 4 + ["*fp32", "*" + dt, "*fp32"],
         dict(NUM_STATES=5, BLOCK_K=8, HAS_GRAD_X=True, STATES_NEED_GRAD=True,
              BLOCK_N=64, BLOCK_W=64, BLOCK_R=32)),
    ]:
        fn = triton.jit(raw)
        ptrs = iter(pointers)
        signature = {name: "constexpr" if name in constants else next(ptrs) if name.endswith("_ptr") else "i32"
                     for name in fn.arg_names}
        triton.compile(ASTSource(fn, signature, constants), target=GPUTarget("cuda", 90, 32),
                       options={"num_warps": 4, "num_stages": 2})
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


def naive_gated_mix_down(states, logits, w_down, b_down, activation):
    """Loops over rows and columns in float64: the definition, written out."""
    k, n, width = states.shape
    rank = w_down.shape[1]
    exps = [math.exp(float(v)) for v in logits]
    gates = [e / sum(exps) for e in exps]
    x = torch.zeros(n, width, dtype=torch.float64)
    h = torch.zeros(n, rank, dtype=torch.float64)
    for row in range(n):
        for i in range(k):
            x[row] += gates[i] * states[i, row].double()
        for j in range(rank):
            pre = float(b_down[j]) + sum(float(x[row, c]) * float(w_down[c, j]) for c in range(width))
            h[row, j] = max(pre, 0.0) if activation == "relu" else 0.5 * pre * (1.0 + math.erf(pre / math.sqrt(2.0)))
    return x, h


@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_reference_matches_naive_loop(activation):
    gen = torch.Generator().manual_seed(4)
    states = torch.randn(3, 5, 6, generator=gen, dtype=torch.float64)
    logits = torch.randn(3, generator=gen, dtype=torch.float64)
    w_down = torch.randn(6, 4, generator=gen, dtype=torch.float64)
    b_down = torch.randn(4, generator=gen, dtype=torch.float64)
    x, h = gated_mix_down_reference(states, logits, w_down, b_down, activation)
    x_naive, h_naive = naive_gated_mix_down(states, logits, w_down, b_down, activation)
    assert_close("x", x, x_naive, 1e-12, 1e-12)
    assert_close("h", h, h_naive, 1e-12, 1e-12)


def test_reference_gates_sum_to_one():
    """Equal inputs mix to themselves whatever the logits; equal logits give the mean."""
    state = torch.randn(7, 16)
    w_down, b_down = torch.randn(16, 8), torch.randn(8)
    x, h = gated_mix_down_reference(state.expand(4, 7, 16), torch.tensor([3.0, -1.0, 0.5, 9.0]), w_down, b_down)
    assert_close("x", x, state, 1e-6, 1e-6)
    assert_close("h", h, F.relu(state @ w_down + b_down), 1e-5, 1e-5)
    states = torch.randn(4, 7, 16)
    x, _ = gated_mix_down_reference(states, torch.full((4,), 2.5), w_down, b_down)
    assert_close("x", x, states.mean(0), 1e-6, 1e-6)


@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_reference_gradcheck(activation):
    gen = torch.Generator().manual_seed(5)
    inputs = (
        torch.randn(3, 4, 5, generator=gen, dtype=torch.float64),
        torch.randn(3, generator=gen, dtype=torch.float64),
        torch.randn(5, 6, generator=gen, dtype=torch.float64),
        torch.randn(6, generator=gen, dtype=torch.float64),
    )
    inputs = tuple(t.requires_grad_() for t in inputs)
    assert torch.autograd.gradcheck(
        lambda *args: gated_mix_down_reference(*args, activation=activation), inputs, eps=1e-6, atol=1e-6
    )


# ------------------------------------------------------------------------------------------
# Dispatch, wrappers and errors
# ------------------------------------------------------------------------------------------


def cpu_inputs(k=3, n=5, width=8, rank=4):
    gen = torch.Generator().manual_seed(6)
    return (
        torch.randn(k, n, width, generator=gen),
        torch.randn(k, generator=gen),
        torch.randn(width, rank, generator=gen),
        torch.randn(rank, generator=gen),
    )


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


def test_sequence_of_states_is_stacked():
    states, logits, w_down, b_down = cpu_inputs()
    x, h = gated_mix_down(list(states.unbind(0)), logits, w_down, b_down)
    x_ref, h_ref = gated_mix_down_reference(states, logits, w_down, b_down)
    assert torch.equal(x, x_ref) and torch.equal(h, h_ref)


def test_autocast_casts_fp32_parameters():
    states, logits, w_down, b_down = cpu_inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x, h = gated_mix_down(states, logits, w_down, b_down)
    x_ref, h_ref = gated_mix_down_reference(states.bfloat16(), logits, w_down.bfloat16(), b_down.bfloat16())
    assert x.dtype == h.dtype == torch.bfloat16
    assert torch.equal(x, x_ref) and torch.equal(h, h_ref)


def test_module_wrapper():
    module = GatedMixDown(num_inputs=3, width=8, rank=4, activation="gelu")
    assert module.gate_logits.shape == (3,) and module.w_down.shape == (8, 4) and module.b_down.shape == (4,)
    assert not module.gate_logits.any() and not module.b_down.any()
    states = cpu_inputs()[0]
    x, h = module(states)
    x_ref, h_ref = gated_mix_down_reference(states, module.gate_logits, module.w_down, module.b_down, "gelu")
    assert torch.equal(x, x_ref) and torch.equal(h, h_ref)
    assert_close("uniform gates", x, states.mean(0), 1e-6, 1e-6)


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
    states, logits, w_down, b_down = (t.bfloat16() for t in cpu_inputs())
    with pytest.raises(RuntimeError, match="bfloat16"):
        gated_mix_down(states, logits.float(), w_down, b_down, backend="triton")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s, g, w, b: (s, g, w, b, "tanh", "auto"), "activation"),
        (lambda s, g, w, b: (s, g, w, b, "relu", "cuda"), "backend"),
        (lambda s, g, w, b: (s[0], g, w, b, "relu", "auto"), r"\[K, N, W\]"),
        (lambda s, g, w, b: (s, g[:2], w, b, "relu", "auto"), "gate_logits"),
        (lambda s, g, w, b: (s, g, w[:-1], b, "relu", "auto"), "w_down"),
        (lambda s, g, w, b: (s, g, w.t(), b, "relu", "auto"), "w_down"),
        (lambda s, g, w, b: (s, g, w, b[:-1], "relu", "auto"), "b_down"),
        (lambda s, g, w, b: (s, g, w.double(), b, "relu", "auto"), "dtype"),
        (lambda s, g, w, b: (s.half(), g, w, b, "relu", "auto"), "dtype"),
        (lambda s, g, w, b: (s, g.long(), w, b, "relu", "auto"), "floating point"),
        (lambda s, g, w, b: ([s[0], s[1, :2]], g[:2], w, b, "relu", "auto"), "one shape"),
    ],
    ids=[
        "activation",
        "backend",
        "states_rank",
        "k_mismatch",
        "w_mismatch",
        "w_transposed",
        "r_mismatch",
        "w_dtype",
        "states_dtype",
        "integer_logits",
        "ragged_sequence",
    ],
)
def test_bad_inputs_raise_value_error(change, message):
    args = change(*cpu_inputs(k=3, n=5, width=8, rank=4))
    with pytest.raises(ValueError, match=message):
        gated_mix_down(*args)
    if args[-1] == "auto":
        with pytest.raises(ValueError, match=message):
            gated_mix_down_reference(*args[:-1])
