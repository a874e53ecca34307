"""A tiny sigmoid-attention language model: kernel path against reference path, and it learns.

The block follows Ramapuram et al. 2025 (sigmoid attention with b = -log n and QK-norm); it is
built here from plain torch so that the check depends on ``kernels`` only. On a CPU the kernel
path runs through Triton's interpreter.
"""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from kernels import sigmoid_attention

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
needs_kernels = pytest.mark.skipif(
    not (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"),
    reason="needs CUDA or Triton's CPU interpreter (TRITON_INTERPRET=1)",
)
VOCAB, WIDTH, HEADS, SEQ_LEN, BATCH = 32, 64, 2, 27, 2


class TinySigmoidLM(nn.Module):
    """Embedding, one pre-norm block (sigmoid attention with QK-norm, GELU MLP), LM head."""

    def __init__(self, impl: str) -> None:
        super().__init__()
        self.impl = impl
        self.head_dim = WIDTH // HEADS
        self.embed = nn.Embedding(VOCAB, WIDTH)
        self.norm1, self.norm2, self.norm_out = (nn.LayerNorm(WIDTH) for _ in range(3))
        self.qkv = nn.Linear(WIDTH, 3 * WIDTH, bias=False)
        self.q_norm = nn.LayerNorm(self.head_dim, bias=False)
        self.k_norm = nn.LayerNorm(self.head_dim, bias=False)
        self.proj = nn.Linear(WIDTH, WIDTH, bias=False)
        self.up = nn.Linear(WIDTH, 4 * WIDTH, bias=False)
        self.down = nn.Linear(4 * WIDTH, WIDTH, bias=False)
        self.lm_head = nn.Linear(WIDTH, VOCAB, bias=False)

    def forward(self, tokens_bt: torch.Tensor) -> torch.Tensor:
        b, t = tokens_bt.shape
        x_btd = self.embed(tokens_bt)
        qkv_bt3hk = self.qkv(self.norm1(x_btd)).view(b, t, 3, HEADS, self.head_dim)
        q_bhtk, k_bhtk, v_bhtk = qkv_bt3hk.permute(2, 0, 3, 1, 4).unbind(0)
        q_bhtk, k_bhtk = self.q_norm(q_bhtk), self.k_norm(k_bhtk)
        o_bhtk = sigmoid_attention(q_bhtk, k_bhtk, v_bhtk, causal=True, impl=self.impl)
        x_btd = x_btd + self.proj(o_bhtk.transpose(1, 2).reshape(b, t, WIDTH))
        x_btd = x_btd + self.down(F.gelu(self.up(self.norm2(x_btd))))
        return self.lm_head(self.norm_out(x_btd))


def _batch(seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (BATCH, SEQ_LEN + 1), generator=gen).to(DEVICE)


def _model(impl: str, seed: int = 0) -> TinySigmoidLM:
    torch.manual_seed(seed)
    return TinySigmoidLM(impl).to(DEVICE)


def _loss(model: nn.Module, tokens_bt: torch.Tensor) -> torch.Tensor:
    logits_btv = model(tokens_bt[:, :-1])
    return F.cross_entropy(logits_btv.reshape(-1, VOCAB), tokens_bt[:, 1:].reshape(-1))


def _sgd_step(model: nn.Module, lr: float) -> None:
    # Plain SGD: importing torch.optim pulls in torch._dynamo, which costs seconds.
    with torch.no_grad():
        for p in model.parameters():
            assert p.grad is not None
            p -= lr * p.grad
            p.grad = None


@needs_kernels
def test_kernel_and_reference_paths_agree_for_one_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """Same loss and parameter gradients, then the same loss after one SGD step."""
    monkeypatch.setenv("ISOFLOP_KERNELS_POISON", "1")  # kernel outputs start as NaN
    tokens_bt = _batch(seed=1)
    models = {impl: _model(impl) for impl in ("reference", "triton")}
    losses = {}
    for impl, model in models.items():
        loss = _loss(model, tokens_bt)
        loss.backward()
        losses[impl] = loss.item()
    torch.testing.assert_close(losses["triton"], losses["reference"], rtol=1e-6, atol=1e-6)
    ref_params = dict(models["reference"].named_parameters())
    for name, p in models["triton"].named_parameters():
        assert p.grad is not None and ref_params[name].grad is not None, name
        torch.testing.assert_close(p.grad, ref_params[name].grad, rtol=1e-4, atol=1e-6,
                                   msg=lambda m, name=name: f"grad of {name}: {m}")
    for model in models.values():
        _sgd_step(model, lr=0.1)
    with torch.no_grad():
        after = {impl: _loss(model, tokens_bt).item() for impl, model in models.items()}
    torch.testing.assert_close(after["triton"], after["reference"], rtol=1e-6, atol=1e-6)
    assert after["reference"] < losses["reference"]


def test_training_lowers_the_loss() -> None:
    """Fitting a fixed batch with ``impl="auto"``: the reference on CPU, the kernels on CUDA."""
    model = _model("auto", seed=2)
    tokens_bt = _batch(seed=3)
    losses = []
    for _ in range(20):
        loss = _loss(model, tokens_bt)
        loss.backward()
        _sgd_step(model, lr=0.3)
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses))), losses
    assert losses[-1] < 0.8 * losses[0], losses
