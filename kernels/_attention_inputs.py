"""Validation of attention inputs, shared by the PyTorch reference and the Triton kernels.

Shapes follow the legend in ``trainers/base.py``: ``q_bhtk`` is (batch, heads, time, head_dim);
k and v share their own length. Every check raises ``ValueError`` naming the argument, the value
received and what was expected.
"""

from __future__ import annotations

import math
import numbers

import torch

# What the FlashSigmoid kernels take: 16-bit or fp32 inputs (fp32 accumulation in every case),
# head dims padded to a power of two >= 16 inside the kernel, at most 256 (one tile per row).
KERNEL_DTYPES: tuple[torch.dtype, ...] = (torch.float16, torch.bfloat16, torch.float32)
KERNEL_HEAD_DIMS: tuple[int, int] = (16, 256)


def check_shapes(q_bhtk: torch.Tensor, k_bhtk: torch.Tensor, v_bhtk: torch.Tensor) -> None:
    """Layout, dtype and device agreement of q, k, v (any floating dtype, any head dim)."""
    for name, x in (("q_bhtk", q_bhtk), ("k_bhtk", k_bhtk), ("v_bhtk", v_bhtk)):
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(
                f"{name} must be 4-D (batch, heads, time, head_dim), got shape {tuple(x.shape)}"
            )
        if not x.is_floating_point():
            raise ValueError(f"{name} must be floating point, got dtype {x.dtype}")
    if not (q_bhtk.dtype == k_bhtk.dtype == v_bhtk.dtype):
        raise ValueError(
            f"q, k, v dtypes differ: {q_bhtk.dtype}, {k_bhtk.dtype}, {v_bhtk.dtype} "
            "(cast them to one dtype, or run under torch.autocast)"
        )
    if not (q_bhtk.device == k_bhtk.device == v_bhtk.device):
        raise ValueError(
            f"q, k, v must be on one device, got {q_bhtk.device}, {k_bhtk.device}, "
            f"{v_bhtk.device}"
        )
    b, h, _, head_dim = q_bhtk.shape
    if k_bhtk.shape[:2] != (b, h) or v_bhtk.shape[:2] != (b, h):
        raise ValueError(
            f"batch and heads must match: q {tuple(q_bhtk.shape)}, k {tuple(k_bhtk.shape)}, "
            f"v {tuple(v_bhtk.shape)}"
        )
    if k_bhtk.shape[2] != v_bhtk.shape[2]:
        raise ValueError(f"k and v lengths differ: {k_bhtk.shape[2]} vs {v_bhtk.shape[2]}")
    if k_bhtk.shape[3] != head_dim or v_bhtk.shape[3] != head_dim:
        raise ValueError(
            f"head dims must match: q {head_dim}, k {k_bhtk.shape[3]}, v {v_bhtk.shape[3]}"
        )


def check_bias(bias: object) -> None:
    """``bias`` is None (meaning -log of the key length) or a finite real number."""
    if bias is None:
        return
    if isinstance(bias, bool) or not isinstance(bias, numbers.Real):
        raise ValueError(
            f"bias must be a float or None (None means -log(key length)), got "
            f"{type(bias).__name__}"
        )
    if not math.isfinite(float(bias)):
        raise ValueError(f"bias must be finite, got {bias}")


def check_kernel_inputs(q_bhtk: torch.Tensor, k_bhtk: torch.Tensor, v_bhtk: torch.Tensor) -> None:
    """``check_shapes`` plus the dtypes and head dims the Triton kernels support."""
    check_shapes(q_bhtk, k_bhtk, v_bhtk)
    if q_bhtk.dtype not in KERNEL_DTYPES:
        raise ValueError(
            f"the FlashSigmoid kernels take {', '.join(str(d) for d in KERNEL_DTYPES)}; got "
            f"{q_bhtk.dtype} (use impl='reference' for other dtypes)"
        )
    lo, hi = KERNEL_HEAD_DIMS
    head_dim = q_bhtk.shape[3]
    if not lo <= head_dim <= hi:
        raise ValueError(
            f"head_dim must be in [{lo}, {hi}] for the FlashSigmoid kernels, got {head_dim}"
        )
