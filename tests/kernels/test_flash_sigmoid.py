"""FlashSigmoid Triton kernels against the float64 PyTorch reference.

On a CPU these run through Triton's interpreter (``tests/conftest.py`` sets TRITON_INTERPRET=1
before ``kernels`` is imported); shapes are small and lengths odd, so partial blocks, padded head
dims and both causal branches are exercised. Every kernel output starts as NaN, so an element a
kernel forgets to write fails the comparison.
"""

from __future__ import annotations

import itertools
import math
import os
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
import triton

import kernels._flash_sigmoid_bwd as bwd_module
import kernels._flash_sigmoid_common as common
import kernels._flash_sigmoid_fwd as fwd_module
from kernels import sigmoid_attention, sigmoid_attention_reference
from kernels._flash_sigmoid_bwd import flash_sigmoid_backward
from kernels._flash_sigmoid_fwd import flash_sigmoid_forward

pytestmark = pytest.mark.skipif(
    not (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"),
    reason="needs CUDA or Triton's CPU interpreter (TRITON_INTERPRET=1)",
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# Bounds on ||out - ref|| / ||ref||: fp32 accumulation everywhere, so the input dtype's rounding
# of P and dS before the second product dominates (observed under the interpreter: fp32 ~3e-7,
# fp16 ~3e-4, bf16 ~6e-3; the margin covers the tanh.approx sigmoid used for 16 bits on CUDA).
REL_TOL = {torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}
# Bound on max |out - ref| / max |ref|: catches a few wrong elements that the L2 norm dilutes.
MAX_TOL = {torch.float32: 2e-5, torch.float16: 1e-2, torch.bfloat16: 5e-2}


@dataclass(frozen=True)
class Case:
    t_q: int
    t_k: int
    head_dim: int
    causal: bool
    dtype: torch.dtype
    bias: float | None = None
    batch: int = 1
    heads: int = 2
    bthk_layout: bool = False  # q, k, v as transposed views of (batch, time, heads, head_dim)

    def __str__(self) -> str:
        dtype = str(self.dtype).removeprefix("torch.")
        mask = "causal" if self.causal else "full"
        layout = "-bthk" if self.bthk_layout else ""
        return f"q{self.t_q}-k{self.t_k}-d{self.head_dim}-{mask}-{dtype}-bias{self.bias}{layout}"


CASES = [
    # Several query and key blocks, each length with a partial last block; default bias.
    Case(t_q=100, t_k=100, head_dim=64, causal=True, dtype=torch.float32),
    # Cross-length, non-causal, explicit bias, batch > 1.
    Case(t_q=77, t_k=45, head_dim=32, causal=False, dtype=torch.float32, bias=-2.5, batch=2,
         heads=1),
    Case(t_q=50, t_k=83, head_dim=32, causal=True, dtype=torch.float32),  # keys past every query
    Case(t_q=70, t_k=30, head_dim=48, causal=True, dtype=torch.float32),  # padded head dim
    Case(t_q=65, t_k=65, head_dim=128, causal=True, dtype=torch.float32, heads=1),
    Case(t_q=61, t_k=61, head_dim=64, causal=False, dtype=torch.float16, bthk_layout=True),
    Case(t_q=33, t_k=47, head_dim=32, causal=True, dtype=torch.float16, bias=1.0),
    # bf16: the interpreter needs the fp32 dot (``LaunchParams.dot_fp32``).
    Case(t_q=40, t_k=40, head_dim=32, causal=True, dtype=torch.bfloat16),
    Case(t_q=29, t_k=37, head_dim=16, causal=False, dtype=torch.bfloat16, bias=-1.0),
]
# Larger cases: many blocks per program, and the largest head dim.
SLOW_CASES = [
    Case(t_q=257, t_k=257, head_dim=64, causal=True, dtype=torch.float32, heads=1),
    Case(t_q=70, t_k=70, head_dim=256, causal=False, dtype=torch.float16, heads=1),
]


def _inputs(case: Case, seed: int) -> tuple[torch.Tensor, ...]:
    """Fresh q, k, v, dO in the case's dtype (drawn in float64, then rounded)."""
    gen = torch.Generator().manual_seed(seed)

    def draw(t: int) -> torch.Tensor:
        if case.bthk_layout:
            x = torch.randn(case.batch, t, case.heads, case.head_dim, generator=gen,
                            dtype=torch.float64)
            return x.to(device=DEVICE, dtype=case.dtype).transpose(1, 2)
        x = torch.randn(case.batch, case.heads, t, case.head_dim, generator=gen,
                        dtype=torch.float64)
        return x.to(device=DEVICE, dtype=case.dtype)

    return draw(case.t_q), draw(case.t_k), draw(case.t_k), draw(case.t_q)


def _reference64(
    case: Case, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, do: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    """Output and (dq, dk, dv) of the reference in float64 on the same rounded inputs."""
    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
    o64 = sigmoid_attention_reference(q64, k64, v64, causal=case.causal, bias=case.bias)
    grads = torch.autograd.grad(o64, (q64, k64, v64), do.double())
    return (o64.detach(), *grads)


def _rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    assert got.shape == want.shape
    assert torch.isfinite(got).all(), "non-finite values: an element was left unwritten"
    return ((got.double() - want).norm() / want.norm()).item()


def _max_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double() - want).abs().max() / want.abs().max()).item()


def _nan_like(x: torch.Tensor) -> torch.Tensor:
    return torch.full(x.shape, float("nan"), dtype=x.dtype, device=x.device)


def _check_kernels(case: Case, seed: int, dq_mode: str = "split",
                   **configs: dict[str, int]) -> None:
    q, k, v, do = _inputs(case, seed)
    want = _reference64(case, q, k, v, do)
    o = flash_sigmoid_forward(q, k, v, causal=case.causal, bias=case.bias, out_bhtk=_nan_like(q),
                              config=configs.get("fwd"))
    dq, dk, dv = flash_sigmoid_backward(
        do, q, k, v, causal=case.causal, bias=case.bias,
        dq_bhtk=_nan_like(q), dk_bhtk=_nan_like(k), dv_bhtk=_nan_like(v),
        dq_mode=dq_mode, dkdv_config=configs.get("dkdv"), dq_config=configs.get("dq"),
    )
    for name, got, ref in zip(("o", "dq", "dk", "dv"), (o, dq, dk, dv), want, strict=True):
        err = _rel_err(got, ref)
        assert err < REL_TOL[case.dtype], f"{name}: relative error {err:.2e} ({case}, {dq_mode})"
        err = _max_err(got, ref)
        assert err < MAX_TOL[case.dtype], f"{name}: max error {err:.2e} ({case}, {dq_mode})"


@pytest.mark.parametrize("case", CASES, ids=str)
def test_kernels_match_reference(case: Case) -> None:
    _check_kernels(case, seed=zlib.crc32(str(case).encode()))


@pytest.mark.slow
@pytest.mark.parametrize("case", SLOW_CASES, ids=str)
@pytest.mark.parametrize("dq_mode", ["split", "atomic"])
def test_larger_cases_match_reference(case: Case, dq_mode: str) -> None:
    _check_kernels(case, seed=zlib.crc32(str(case).encode()) + 2, dq_mode=dq_mode)


@pytest.mark.parametrize("case", [CASES[0], CASES[3], CASES[5]], ids=str)
def test_atomic_dq_matches_reference(case: Case) -> None:
    """dQ accumulated by the dK/dV kernel with fp32 atomics instead of its own kernel."""
    _check_kernels(case, seed=zlib.crc32(str(case).encode()) + 1, dq_mode="atomic")


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
def test_kernels_with_unequal_block_sizes(causal: bool) -> None:
    """BLOCK_M != BLOCK_N: diagonal blocks must start exactly where unmasked ones end."""
    case = Case(t_q=70, t_k=70, head_dim=32, causal=causal, dtype=torch.float32, heads=1)
    _check_kernels(
        case, seed=7,
        fwd={"BLOCK_M": 32, "BLOCK_N": 16},
        dkdv={"BLOCK_M": 16, "BLOCK_N": 32},
        dq={"BLOCK_M": 32, "BLOCK_N": 16},
    )


_bench_calls = itertools.count(1)


def _rank_in_call_order(
    kernel_call: Callable[[], None], quantiles: tuple[float, ...]
) -> list[float]:
    """Stand-in for GPU timing: run each candidate once; the first one tried wins."""
    kernel_call()
    return [float(next(_bench_calls))] * len(quantiles)


def _tuned(
    kernel: triton.runtime.Heuristics, blocks: list[tuple[int, int]],
    reset_to_zero: list[str] | None = None,
) -> triton.runtime.Autotuner:
    return triton.autotune(
        configs=[triton.Config({"BLOCK_M": m, "BLOCK_N": n}) for m, n in blocks],
        key=fwd_module.TUNING_KEY, do_bench=_rank_in_call_order, reset_to_zero=reset_to_zero,
    )(kernel)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the real autotuned path runs on CUDA")
def test_autotuned_launch_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CUDA launch path (autotuner, grid from the chosen config) under the interpreter."""
    tuned = {
        "_fwd_kernel_tuned": _tuned(fwd_module._fwd_kernel_heuristic, [(32, 16), (16, 16)]),
        "_dkdv_kernel_tuned": _tuned(bwd_module._dkdv_kernel_heuristic, [(16, 32), (16, 16)]),
        "_dkdv_kernel_fused_tuned": _tuned(bwd_module._dkdv_kernel_heuristic,
                                           [(16, 32), (16, 16)], reset_to_zero=["DQ_ACC"]),
        "_dq_kernel_tuned": _tuned(bwd_module._dq_kernel_heuristic, [(32, 16), (16, 16)]),
    }
    for module in (fwd_module, bwd_module):
        monkeypatch.setattr(module, "interpreter_enabled", lambda: False)
        for name, tuner in tuned.items():
            if hasattr(module, name):
                monkeypatch.setattr(module, name, tuner)
    case = Case(t_q=37, t_k=37, head_dim=32, causal=True, dtype=torch.float32, heads=1)
    _check_kernels(case, seed=5, dq_mode="split")
    # Trial runs of the fused kernel add into the dQ buffer: reset_to_zero must undo them.
    _check_kernels(case, seed=6, dq_mode="atomic")
    assert all(len(tuner.cache) == 1 for tuner in tuned.values())


def test_autograd_function_matches_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ISOFLOP_KERNELS_POISON", "1")
    case = Case(t_q=45, t_k=45, head_dim=32, causal=True, dtype=torch.float32, bias=-1.5)
    q, k, v, do = _inputs(case, seed=11)
    q, k, v = (x.requires_grad_() for x in (q, k, v))
    o = sigmoid_attention(q, k, v, causal=True, bias=-1.5, impl="triton")
    grads = torch.autograd.grad(o, (q, k, v), do, retain_graph=True)
    for got, ref in zip((o, *grads), _reference64(case, q, k, v, do), strict=True):
        assert _rel_err(got, ref) < REL_TOL[torch.float32]
    # A sum's gradient reaches the kernel as an expanded (stride-0) dO.
    grads = torch.autograd.grad(o.sum(), (q, k, v))
    for got, ref in zip(grads, _reference64(case, q, k, v, torch.ones_like(do))[1:], strict=True):
        assert _rel_err(got, ref) < REL_TOL[torch.float32]


# exp2 overflowing to inf is how a very negative score becomes exactly p = 0.
@pytest.mark.filterwarnings("ignore:overflow encountered in exp2:RuntimeWarning")
def test_causal_mask_is_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    """Future keys change nothing (bit for bit) and receive exactly zero gradient."""
    monkeypatch.setenv("ISOFLOP_KERNELS_POISON", "1")
    case = Case(t_q=40, t_k=56, head_dim=32, causal=True, dtype=torch.float32, heads=1)
    q, k, v, do = _inputs(case, seed=13)
    o = flash_sigmoid_forward(q, k, v, causal=True, bias=None)
    k2, v2 = k.clone(), v.clone()
    k2[:, :, 20:] = 50.0  # scores in the hundreds: they would dominate unless P is exactly 0
    v2[:, :, 20:] = 1e4
    o2 = flash_sigmoid_forward(q, k2, v2, causal=True, bias=None)
    assert torch.equal(o[:, :, :20], o2[:, :, :20])
    _, dk, dv = flash_sigmoid_backward(do, q, k, v, causal=True, bias=None)
    assert torch.count_nonzero(dk[:, :, case.t_q:]) == 0
    assert torch.count_nonzero(dv[:, :, case.t_q:]) == 0


def test_dq_mode_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(bwd_module.DQ_MODE_ENV, raising=False)
    assert bwd_module.default_dq_mode() == "split"
    monkeypatch.setenv(bwd_module.DQ_MODE_ENV, "atomic")
    assert bwd_module.default_dq_mode() == "atomic"
    monkeypatch.setenv(bwd_module.DQ_MODE_ENV, "fused")
    with pytest.raises(ValueError, match="'split', 'atomic'"):
        bwd_module.default_dq_mode()


def test_output_buffers_are_checked() -> None:
    q = torch.zeros(1, 2, 8, 32, device=DEVICE)
    with pytest.raises(ValueError, match="out_bhtk is"):
        flash_sigmoid_forward(q, q, q, causal=True, bias=None, out_bhtk=q[:, :1])
    with pytest.raises(ValueError, match="dk_bhtk is"):
        flash_sigmoid_backward(q, q, q, q, causal=True, bias=None, dk_bhtk=q.half())
    with pytest.raises(ValueError, match="multiple of BLOCK_N"):
        flash_sigmoid_forward(q, q, q, causal=True, bias=None,
                              config={"BLOCK_M": 16, "BLOCK_N": 32})


@pytest.mark.parametrize("impl", ["triton", "reference"])
def test_autocast_runs_in_the_autocast_dtype(impl: str) -> None:
    """Under autocast, fp32 q and k (after a LayerNorm) and a bf16 v meet in bf16, as in SDPA."""
    device_type = "cuda" if DEVICE == "cuda" else "cpu"
    gen = torch.Generator().manual_seed(17)
    q, k = (torch.randn(1, 2, 19, 32, generator=gen).to(DEVICE).requires_grad_()
            for _ in range(2))
    v = torch.randn(1, 2, 19, 32, generator=gen).to(DEVICE, torch.bfloat16).requires_grad_()
    with torch.autocast(device_type, dtype=torch.bfloat16):
        o = sigmoid_attention(q, k, v, impl=impl)  # type: ignore[arg-type]
    assert o.dtype == torch.bfloat16
    o.float().square().sum().backward()
    assert q.grad is not None and q.grad.dtype == torch.float32
    assert v.grad is not None and v.grad.dtype == torch.bfloat16
    want = sigmoid_attention_reference(q.double(), k.double(), v.double())
    assert _rel_err(o, want) < REL_TOL[torch.bfloat16]


@pytest.mark.parametrize("fast", [True, False], ids=["tanh", "exp2"])
def test_sigmoid_constants(fast: bool) -> None:
    """Both forms of the kernels' sigmoid, evaluated in torch, give sigmoid(qk / sqrt(k) + b).

    The tanh.approx form runs only on CUDA, so this is its CPU check.
    """
    qk = torch.linspace(-60.0, 60.0, 241, dtype=torch.float64)
    a, b = common.sigmoid_constants(64, -2.3, fast=fast)
    got = 0.5 * torch.tanh(qk * a + b) + 0.5 if fast else 1.0 / (1.0 + torch.exp2(qk * a + b))
    torch.testing.assert_close(got, torch.sigmoid(qk / 8.0 - 2.3), rtol=1e-12, atol=1e-15)


def test_launch_params_under_the_interpreter() -> None:
    """The fp32 dot is used exactly for bf16 in the interpreter; the tanh sigmoid never there."""
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        params = common.launch_params(torch.zeros(1, 1, 4, 48, dtype=dtype, device=DEVICE), 9, None)
        interpret = common.interpreter_enabled()
        assert params.dot_fp32 == (interpret and dtype == torch.bfloat16)
        assert params.block_k == 64 and not params.even_k
        if interpret:
            assert not params.fast_sigmoid
        expected = common.sigmoid_constants(48, -math.log(9), fast=params.fast_sigmoid)
        assert (params.sig_a, params.sig_b) == pytest.approx(expected)
