"""Sigmoid attention (Ramapuram et al., ICLR 2025): out = sigmoid(q k^T / sqrt(k) + bias) v.

Two implementations with one signature:

* ``sigmoid_attention_reference``: plain PyTorch, any device and floating dtype (float64 for
  tests);
* the FlashSigmoid Triton kernels (``_flash_sigmoid_fwd``, ``_flash_sigmoid_bwd``), wrapped in
  a ``torch.autograd.Function``; picked by ``sigmoid_attention`` for CUDA tensors.

Shapes: q_bhtk (batch, heads, time, head_dim); k_bhtk and v_bhtk may have their own length.
``bias`` defaults to -log(n) with n the key length. The causal mask is top-left aligned (query i
sees keys j <= i, as ``torch.tril``); masked probabilities are exactly 0, not sigmoid(-inf)
approximations, so they add nothing to the output and pass no gradient.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch.autograd.function import once_differentiable

from kernels._attention_inputs import (
    KERNEL_DTYPES,
    KERNEL_HEAD_DIMS,
    check_bias,
    check_kernel_inputs,
    check_shapes,
)
from kernels._flash_sigmoid_bwd import flash_sigmoid_backward
from kernels._flash_sigmoid_common import interpreter_enabled
from kernels._flash_sigmoid_fwd import flash_sigmoid_forward

Impl = Literal["auto", "triton", "reference"]
IMPLS: tuple[str, ...] = ("auto", "triton", "reference")

__all__ = [
    "IMPLS",
    "KERNEL_DTYPES",
    "KERNEL_HEAD_DIMS",
    "FlashSigmoidFunction",
    "sigmoid_attention",
    "sigmoid_attention_reference",
]


def sigmoid_attention_reference(
    q_bhtk: torch.Tensor,
    k_bhtk: torch.Tensor,
    v_bhtk: torch.Tensor,
    *,
    causal: bool = True,
    bias: float | None = None,
) -> torch.Tensor:
    """Plain PyTorch sigmoid attention (Ramapuram et al. 2025); ``bias`` defaults to -log n.

    n is the key length. Everything is computed in at least float32 (float64 stays float64) and
    the output is cast back to q's dtype, so 16-bit inputs get fp32 accumulation as in the kernels.
    """
    check_shapes(q_bhtk, k_bhtk, v_bhtk)
    check_bias(bias)
    t_q, t_k = q_bhtk.shape[-2], k_bhtk.shape[-2]
    if bias is None:
        bias = -math.log(t_k)
    out_dtype = q_bhtk.dtype
    compute_dtype = torch.promote_types(out_dtype, torch.float32)
    q_bhtk, k_bhtk, v_bhtk = (x.to(compute_dtype) for x in (q_bhtk, k_bhtk, v_bhtk))
    scale = 1.0 / math.sqrt(q_bhtk.shape[-1])
    p_bhtt = torch.sigmoid((q_bhtk @ k_bhtk.transpose(-1, -2)) * scale + bias)
    if causal:
        mask_tt = torch.ones(t_q, t_k, dtype=torch.bool, device=q_bhtk.device).tril()
        p_bhtt = p_bhtt.masked_fill(~mask_tt, 0.0)
    return (p_bhtt @ v_bhtk).to(out_dtype)


class FlashSigmoidFunction(torch.autograd.Function):
    """Autograd wrapper around the FlashSigmoid kernels (Ramapuram et al. 2025).

    As in FlashAttention-2 (Dao 2023) only q, k, v are saved and the backward recomputes P block
    by block; unlike it, nothing else is saved (no log-sum-exp). Not twice differentiable.
    """

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        q_bhtk: torch.Tensor,
        k_bhtk: torch.Tensor,
        v_bhtk: torch.Tensor,
        causal: bool,
        bias: float | None,
    ) -> torch.Tensor:
        o_bhtk = flash_sigmoid_forward(q_bhtk, k_bhtk, v_bhtk, causal=causal, bias=bias)
        ctx.save_for_backward(q_bhtk, k_bhtk, v_bhtk)
        ctx.causal = causal
        ctx.bias = bias
        return o_bhtk

    @staticmethod
    @once_differentiable
    def backward(
        ctx: torch.autograd.function.FunctionCtx, do_bhtk: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, None, None]:
        q_bhtk, k_bhtk, v_bhtk = ctx.saved_tensors
        dq, dk, dv = flash_sigmoid_backward(
            do_bhtk, q_bhtk, k_bhtk, v_bhtk, causal=ctx.causal, bias=ctx.bias
        )
        return dq, dk, dv, None, None


def _use_triton(q_bhtk: torch.Tensor, impl: str) -> bool:
    if impl not in IMPLS:
        raise ValueError(f"impl={impl!r} is not one of {IMPLS}")
    if impl == "reference":
        return False
    if impl == "auto":
        return q_bhtk.is_cuda
    if q_bhtk.is_cuda or interpreter_enabled():
        return True
    raise ValueError(
        f"impl='triton' needs CUDA tensors (got device {q_bhtk.device}) or Triton's CPU "
        "interpreter (TRITON_INTERPRET=1 set before importing kernels)"
    )


def _autocast(
    q_bhtk: torch.Tensor, k_bhtk: torch.Tensor, v_bhtk: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Under ``torch.autocast``, cast q, k, v to the autocast dtype.

    Autocast runs ``scaled_dot_product_attention`` in its lower precision; doing the same here
    lets a model whose q and k went through an fp32 op (a LayerNorm for QK-norm) while v comes
    from a bf16 matmul call the kernels with one dtype.
    """
    device_type = q_bhtk.device.type
    if device_type not in ("cuda", "cpu") or not torch.is_autocast_enabled(device_type):
        return q_bhtk, k_bhtk, v_bhtk
    dtype = torch.get_autocast_dtype(device_type)
    return q_bhtk.to(dtype), k_bhtk.to(dtype), v_bhtk.to(dtype)


def sigmoid_attention(
    q_bhtk: torch.Tensor,
    k_bhtk: torch.Tensor,
    v_bhtk: torch.Tensor,
    *,
    causal: bool = True,
    bias: float | None = None,
    impl: Impl = "auto",
) -> torch.Tensor:
    """Sigmoid attention (Ramapuram et al. 2025): Triton kernels on CUDA, the reference elsewhere.

    ``bias`` defaults to -log(key length). ``impl="triton"`` forces the kernels (CUDA tensors,
    or CPU tensors under ``TRITON_INTERPRET=1``); ``impl="reference"`` forces plain PyTorch.
    Raises ``ValueError`` for inputs that disagree in layout, dtype or device, and, on the
    kernel path, for dtypes or head dims the kernels do not support (``KERNEL_DTYPES``,
    ``KERNEL_HEAD_DIMS``).
    """
    for name, x in (("q_bhtk", q_bhtk), ("k_bhtk", k_bhtk), ("v_bhtk", v_bhtk)):
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    q_bhtk, k_bhtk, v_bhtk = _autocast(q_bhtk, k_bhtk, v_bhtk)
    check_shapes(q_bhtk, k_bhtk, v_bhtk)
    check_bias(bias)
    if _use_triton(q_bhtk, impl):
        check_kernel_inputs(q_bhtk, k_bhtk, v_bhtk)
        bias = None if bias is None else float(bias)
        return FlashSigmoidFunction.apply(q_bhtk, k_bhtk, v_bhtk, causal, bias)
    return sigmoid_attention_reference(q_bhtk, k_bhtk, v_bhtk, causal=causal, bias=bias)
