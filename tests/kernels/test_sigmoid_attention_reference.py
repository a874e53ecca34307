"""The PyTorch reference and the dispatcher: cheap checks that need no kernel launch."""

from __future__ import annotations

import math

import pytest
import torch

from kernels import sigmoid_attention, sigmoid_attention_reference


def _naive(q_bhtk, k_bhtk, v_bhtk, *, causal: bool, bias: float) -> torch.Tensor:
    """Sigmoid attention element by element (Ramapuram et al., ICLR 2025)."""
    b, h, t_q, head_dim = q_bhtk.shape
    t_k = k_bhtk.shape[2]
    out_bhtk = torch.zeros_like(q_bhtk)
    for i in range(t_q):
        for j in range(t_k):
            if causal and j > i:
                continue
            s_bh = (q_bhtk[:, :, i] * k_bhtk[:, :, j]).sum(-1) / math.sqrt(head_dim) + bias
            out_bhtk[:, :, i] += torch.sigmoid(s_bh)[..., None] * v_bhtk[:, :, j]
    return out_bhtk


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize(("t_q", "t_k"), [(7, 7), (5, 9), (9, 5)])
def test_reference_matches_the_definition(causal: bool, t_q: int, t_k: int) -> None:
    """Including cross lengths: the causal mask is top-left aligned (key j visible to i >= j)."""
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(2, 3, t_q, 16, generator=gen, dtype=torch.float64)
    k, v = (torch.randn(2, 3, t_k, 16, generator=gen, dtype=torch.float64) for _ in range(2))
    got = sigmoid_attention_reference(q, k, v, causal=causal)
    want = _naive(q, k, v, causal=causal, bias=-math.log(t_k))
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_reference_accumulates_16_bit_inputs_in_fp32(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(1, 2, 33, 32, generator=gen).to(dtype) for _ in range(3))
    got = sigmoid_attention_reference(q, k, v, causal=True, bias=-1.0)
    assert got.dtype == dtype
    want = sigmoid_attention_reference(q.double(), k.double(), v.double(), causal=True, bias=-1.0)
    # Only the rounding of the output to the 16-bit format: at most one ulp, relative.
    ulp = torch.finfo(dtype).eps
    assert ((got.double() - want).abs() <= ulp * want.abs() + 1e-6).all()


def test_reference_default_bias_uses_the_key_length() -> None:
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(1, 2, 5, 16, generator=gen, dtype=torch.float64)
    k, v = (torch.randn(1, 2, 9, 16, generator=gen, dtype=torch.float64) for _ in range(2))
    torch.testing.assert_close(
        sigmoid_attention_reference(q, k, v, causal=False),
        sigmoid_attention_reference(q, k, v, causal=False, bias=-math.log(9)),
    )


def test_reference_gradients_pass_gradcheck() -> None:
    gen = torch.Generator().manual_seed(2)
    inputs = tuple(
        torch.randn(1, 2, 6, 16, generator=gen, dtype=torch.float64, requires_grad=True)
        for _ in range(3)
    )
    assert torch.autograd.gradcheck(
        lambda q, k, v: sigmoid_attention_reference(q, k, v, causal=True, bias=-0.7), inputs
    )


def test_auto_on_cpu_is_the_reference() -> None:
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 1, 5, 16, generator=gen) for _ in range(3))
    assert torch.equal(sigmoid_attention(q, k, v), sigmoid_attention_reference(q, k, v))
    assert torch.equal(
        sigmoid_attention(q, k, v, impl="reference"), sigmoid_attention_reference(q, k, v)
    )


def test_unknown_impl_lists_the_valid_ones() -> None:
    q = torch.zeros(1, 1, 4, 16)
    with pytest.raises(ValueError, match="'auto', 'triton', 'reference'"):
        sigmoid_attention(q, q, q, impl="cuda")  # type: ignore[arg-type]


def test_triton_on_cpu_without_the_interpreter_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    q = torch.zeros(1, 1, 4, 16)
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        sigmoid_attention(q, q, q, impl="triton")
