"""Pieces shared by the FlashSigmoid forward and backward kernels.

FlashSigmoid (Ramapuram et al., ICLR 2025, "Theory, Analysis, and Best Practices for Sigmoid
Self-Attention") is FlashAttention-2 (Dao, 2023) with the softmax replaced by an
elementwise sigmoid. Every probability is final as soon as its score is known, so the kernels
keep no running max, no running sum, no rescaling of the accumulator and no log-sum-exp.

Shapes follow the legend in ``trainers/base.py``: ``q_bhtk`` is (batch, heads, time, head_dim).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

LOG2_E = 1.4426950408889634

# Switch off the tanh.approx sigmoid for 16-bit inputs on CUDA (e.g. to bisect a numerical issue).
_FAST_SIGMOID_ENV = "ISOFLOP_FLASH_SIGMOID_FAST"
# Allocate kernel outputs filled with NaN, so elements a kernel forgets to write show up in tests.
_POISON_ENV = "ISOFLOP_KERNELS_POISON"


def interpreter_enabled() -> bool:
    """True when Triton runs kernels through its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def poison_outputs() -> bool:
    """True when launchers must allocate outputs filled with NaN (a debugging aid for tests)."""
    return os.environ.get(_POISON_ENV) == "1"


def new_output(like: torch.Tensor, shape: tuple[int, ...] | None = None) -> torch.Tensor:
    """An output buffer like ``like``: uninitialised, or NaN-filled when poisoning is on."""
    shape = tuple(like.shape) if shape is None else shape
    if poison_outputs():
        return torch.full(shape, float("nan"), dtype=like.dtype, device=like.device)
    return torch.empty(shape, dtype=like.dtype, device=like.device)


def output_buffer(name: str, given: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """``given`` after checking it matches ``like`` in shape, dtype and device; else a new one."""
    if given is None:
        return new_output(like)
    if (given.shape, given.dtype, given.device) != (like.shape, like.dtype, like.device):
        raise ValueError(
            f"{name} is {tuple(given.shape)} {given.dtype} on {given.device}, expected "
            f"{tuple(like.shape)} {like.dtype} on {like.device}"
        )
    return given


@dataclass(frozen=True, kw_only=True)
class LaunchParams:
    """Per-call kernel parameters derived from the inputs (everything but the block sizes)."""

    sig_a: float  # scores enter the sigmoid as qk * sig_a + sig_b (see ``_sigmoid``)
    sig_b: float
    sm_scale: float  # 1 / sqrt(head_dim), applied to dQ and dK at the end of the backward
    block_k: int  # head_dim padded to a power of two (tl.dot and tl.arange need one)
    even_k: bool  # head_dim == block_k: no head-dim masks
    fast_sigmoid: bool  # tanh.approx.f32 instead of exp2 + division
    dot_fp32: bool  # upcast tl.dot operands to fp32 (the interpreter's bf16 dot is wrong)
    input_precision: str  # "ieee" for fp32 inputs (tf32 would cost three digits), else unused


def sigmoid_constants(head_dim: int, bias: float, *, fast: bool) -> tuple[float, float]:
    """(a, b) such that the kernels' ``_sigmoid(qk, a, b)`` is sigmoid(qk / sqrt(head_dim) + bias).

    fast: sigmoid(x) = 0.5 + 0.5 * tanh(x / 2), one MUFU tanh.approx instead of exp2 and a
    division, so tanh is taken of qk * a + b. Otherwise sigmoid(x) = 1 / (1 + 2^(-x log2 e)),
    exp2 being the native instruction, and 2 is raised to qk * a + b.
    """
    scale = 1.0 / math.sqrt(head_dim)
    if fast:
        return 0.5 * scale, 0.5 * bias
    return -scale * LOG2_E, -bias * LOG2_E


def launch_params(q_bhtk: torch.Tensor, t_k: int, bias: float | None) -> LaunchParams:
    """Scaling constants and compile-time switches for one call.

    ``bias`` defaults to -log(t_k) (Ramapuram et al. 2025: b = -log n keeps the attention
    output's norm from growing with the sequence length at initialisation).
    """
    head_dim = q_bhtk.shape[-1]
    if bias is None:
        bias = -math.log(t_k)
    sixteen_bit = q_bhtk.dtype in (torch.float16, torch.bfloat16)
    interpret = interpreter_enabled()
    fast = (
        sixteen_bit
        and q_bhtk.is_cuda
        and not interpret
        and os.environ.get(_FAST_SIGMOID_ENV, "1") != "0"
    )
    sig_a, sig_b = sigmoid_constants(head_dim, float(bias), fast=fast)
    block_k = max(16, triton.next_power_of_2(head_dim))
    return LaunchParams(
        sig_a=sig_a,
        sig_b=sig_b,
        sm_scale=1.0 / math.sqrt(head_dim),
        block_k=block_k,
        even_k=block_k == head_dim,
        fast_sigmoid=fast,
        dot_fp32=interpret and q_bhtk.dtype == torch.bfloat16,
        input_precision="ieee" if q_bhtk.dtype == torch.float32 else "tf32",
    )


@triton.jit
def _sigmoid(qk, sig_a, sig_b, FAST: tl.constexpr):
    """sigmoid(qk / sqrt(head_dim) + bias), constants folded by ``sigmoid_constants``."""
    if FAST:
        # tanh.approx.f32 has a relative error near 2^-11: below bf16/fp16 rounding, so it is
        # used for 16-bit inputs only (the usual fast sigmoid on NVIDIA GPUs).
        t = tl.inline_asm_elementwise(
            "tanh.approx.f32 $0, $1;",
            "=f,f",
            [qk * sig_a + sig_b],
            dtype=tl.float32,
            is_pure=True,
            pack=1,
        )
        return 0.5 * t + 0.5
    else:
        # exp2 overflows to +inf for very negative scores, giving exactly 0: no NaN.
        return 1.0 / (1.0 + tl.exp2(qk * sig_a + sig_b))


@triton.jit
def _mm(a, b, DOT_FP32: tl.constexpr, INPUT_PRECISION: tl.constexpr):
    """a @ b with fp32 accumulation."""
    if DOT_FP32:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        return tl.dot(a, b, input_precision=INPUT_PRECISION)


@triton.jit
def _mm_acc(a, b, acc, DOT_FP32: tl.constexpr, INPUT_PRECISION: tl.constexpr):
    """acc + a @ b with fp32 accumulation."""
    if DOT_FP32:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    else:
        return tl.dot(a, b, acc, input_precision=INPUT_PRECISION)


@triton.jit
def _load_tile(ptrs, rows, n_rows, cols, n_cols, EVEN_ROWS: tl.constexpr, EVEN_COLS: tl.constexpr):
    """Load a (rows x head_dim) tile, padding out-of-range rows and columns with zeros.

    The kernels rely on the zero padding: a padded key has v = 0 and a padded query has dO = 0,
    so their (non-zero) sigmoid probabilities contribute nothing, and the sequence-length edges
    need no extra masking of P.
    """
    if EVEN_ROWS and EVEN_COLS:
        return tl.load(ptrs)
    elif EVEN_ROWS:
        return tl.load(ptrs, mask=cols[None, :] < n_cols, other=0.0)
    elif EVEN_COLS:
        return tl.load(ptrs, mask=rows[:, None] < n_rows, other=0.0)
    else:
        return tl.load(ptrs, mask=(rows[:, None] < n_rows) & (cols[None, :] < n_cols), other=0.0)


@triton.jit
def _store_tile(ptrs, value, rows, n_rows, cols, n_cols, EVEN_ROWS: tl.constexpr,
                EVEN_COLS: tl.constexpr):
    """Store a (rows x head_dim) tile, skipping out-of-range rows and columns."""
    if EVEN_ROWS and EVEN_COLS:
        tl.store(ptrs, value)
    elif EVEN_ROWS:
        tl.store(ptrs, value, mask=cols[None, :] < n_cols)
    elif EVEN_COLS:
        tl.store(ptrs, value, mask=rows[:, None] < n_rows)
    else:
        tl.store(ptrs, value, mask=(rows[:, None] < n_rows) & (cols[None, :] < n_cols))
