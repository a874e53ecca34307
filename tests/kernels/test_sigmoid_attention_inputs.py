"""Invalid inputs to ``sigmoid_attention`` raise ``ValueError`` before any kernel launch."""

from __future__ import annotations

import os

import pytest
import torch

from kernels import sigmoid_attention
from kernels._flash_sigmoid_fwd import flash_sigmoid_forward

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
needs_kernels = pytest.mark.skipif(
    not (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"),
    reason="needs CUDA or Triton's CPU interpreter (TRITON_INTERPRET=1)",
)


def _qkv(
    t_q: int = 8, t_k: int = 8, head_dim: int = 32, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    q = torch.zeros(1, 2, t_q, head_dim, dtype=dtype, device=DEVICE)
    k = torch.zeros(1, 2, t_k, head_dim, dtype=dtype, device=DEVICE)
    return q, k, k.clone()


def _mismatches() -> list[tuple[str, tuple[torch.Tensor, ...]]]:
    q, k, v = _qkv()
    return [
        ("4-D", (q[0], k[0], v[0])),
        ("floating point", (q.long(), k.long(), v.long())),
        ("dtypes differ", (q, k.half(), v)),
        ("one device", (q, k.to("meta"), v)),
        ("batch and heads must match", (q, k[:, :1], v[:, :1])),
        ("k and v lengths differ", (q, k, v[:, :, :5])),
        ("head dims must match", (q, k[..., :16], v[..., :16])),
    ]


@pytest.mark.parametrize("impl", ["auto", "reference", pytest.param("triton", marks=needs_kernels)])
@pytest.mark.parametrize("case", range(len(_mismatches())))
def test_mismatched_inputs_are_refused(case: int, impl: str) -> None:
    message, (q, k, v) = _mismatches()[case]
    with pytest.raises(ValueError, match=message):
        sigmoid_attention(q, k, v, impl=impl)  # type: ignore[arg-type]


@pytest.mark.parametrize("bias", [float("nan"), float("inf"), "0.5", torch.tensor(0.5), True])
def test_bad_bias_is_refused(bias: object) -> None:
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="bias must be"):
        sigmoid_attention(q, k, v, bias=bias)  # type: ignore[arg-type]


def test_non_tensor_is_refused() -> None:
    q, k, _ = _qkv()
    with pytest.raises(ValueError, match="v_bhtk must be a torch.Tensor"):
        sigmoid_attention(q, k, [0.0])  # type: ignore[arg-type]


@needs_kernels
@pytest.mark.parametrize("head_dim", [8, 15, 257, 512])
def test_kernel_head_dim_range(head_dim: int) -> None:
    q, k, v = _qkv(head_dim=head_dim)
    with pytest.raises(ValueError, match=r"head_dim must be in \[16, 256\]"):
        sigmoid_attention(q, k, v, impl="triton")
    with pytest.raises(ValueError, match=r"head_dim must be in \[16, 256\]"):
        flash_sigmoid_forward(q, k, v, causal=True, bias=None)
    # The reference takes any head dim.
    assert sigmoid_attention(q, k, v, impl="reference").shape == q.shape


@needs_kernels
def test_kernel_dtypes() -> None:
    q, k, v = _qkv(dtype=torch.float64)
    with pytest.raises(ValueError, match="impl='reference' for other dtypes"):
        sigmoid_attention(q, k, v, impl="triton")
    assert sigmoid_attention(q, k, v, impl="reference").dtype == torch.float64
