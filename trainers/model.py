"""A small GPT (after karpathy/nanoGPT's ``model.py``), read top to bottom.

Choices, each fixed so that ``trainers.shapes.count_params`` can count parameters exactly:

- Pre-norm residual blocks with bias-free LayerNorm (nanoGPT's ``bias=False`` option, which it
  reports as slightly better and faster); a final LayerNorm before the output head.
- Bias-free linear layers; GELU MLP of width ``d_ff``.
- Positions: rotary embeddings on q and k (RoPE, Su et al. 2021; no parameters) or a learned
  position table, per ``ModelConfig.positional``.
- Causal attention: softmax through ``torch.nn.functional.scaled_dot_product_attention``, or
  sigmoid attention through ``kernels.sigmoid_attention`` with QK-norm (a bias-free LayerNorm on q
  and k over the head dimension) and bias ``-log(seq_len)`` (Ramapuram et al., ICLR 2025,
  "Theory, analysis, and best practices for sigmoid self-attention"). The paper's further
  stabiliser for large models (a norm on the attention output, or LayerScale) is left out.
- Output head tied to the token embedding or separate, per ``ModelConfig.tie_embeddings``.
- MLPs dense, or top-k routed experts (``trainers.moe``) when the shape has ``n_experts``.
- GPT-2 initialisation as in nanoGPT: weights N(0, 0.02), the two residual output projections of
  every block N(0, 0.02 / sqrt(2 * n_layer)) so the residual stream's variance does not grow with
  depth (Radford et al. 2019, section 2.3), norm weights 1.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from trainers.base import ModelShape
from trainers.config import ModelConfig
from trainers.moe import MoE

INIT_STD = 0.02  # GPT-2


def rope_tables(
    seq_len: int, head_dim: int, base: float = 10000.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables of shape (t, k) for rotary embeddings (Su et al. 2021, eq. 34)."""
    inv_freq_k = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angle_tk = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq_k)
    angle_tk = torch.cat([angle_tk, angle_tk], dim=-1)
    return angle_tk.cos(), angle_tk.sin()


def apply_rope(x_bhtk: torch.Tensor, cos_tk: torch.Tensor, sin_tk: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x_i, x_{i+k/2}) by position-dependent angles (the "rotate half" layout)."""
    half = x_bhtk.shape[-1] // 2
    x1, x2 = x_bhtk[..., :half], x_bhtk[..., half:]
    rotated_bhtk = torch.cat([-x2, x1], dim=-1)
    return x_bhtk * cos_tk + rotated_bhtk * sin_tk


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention, softmax or sigmoid."""

    def __init__(self, shape: ModelShape, config: ModelConfig) -> None:
        super().__init__()
        self.n_head = shape.n_head
        self.head_dim = shape.d_model // shape.n_head
        self.sigmoid = config.attention == "sigmoid"
        self.qkv = nn.Linear(shape.d_model, 3 * shape.d_model, bias=False)
        self.proj = nn.Linear(shape.d_model, shape.d_model, bias=False)
        if self.sigmoid:
            # Imported here so that softmax models never load the Triton kernels.
            from kernels import sigmoid_attention

            self.sigmoid_attention = sigmoid_attention
            # QK-norm keeps sigmoid attention's logits bounded (Ramapuram et al. 2025, section 3).
            self.q_norm = nn.LayerNorm(self.head_dim, bias=False)
            self.k_norm = nn.LayerNorm(self.head_dim, bias=False)
            self.bias = -math.log(shape.seq_len)

    def forward(
        self, x_btd: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None
    ) -> torch.Tensor:
        b, t, d = x_btd.shape
        qkv_bt3hk = self.qkv(x_btd).view(b, t, 3, self.n_head, self.head_dim)
        q_bhtk, k_bhtk, v_bhtk = qkv_bt3hk.permute(2, 0, 3, 1, 4).unbind(0)
        if self.sigmoid:
            q_bhtk, k_bhtk = self.q_norm(q_bhtk), self.k_norm(k_bhtk)
        if rope is not None:
            cos_tk, sin_tk = rope[0][:t], rope[1][:t]
            q_bhtk = apply_rope(q_bhtk, cos_tk, sin_tk)
            k_bhtk = apply_rope(k_bhtk, cos_tk, sin_tk)
        if self.sigmoid:
            o_bhtk = self.sigmoid_attention(q_bhtk, k_bhtk, v_bhtk, causal=True, bias=self.bias)
        else:
            o_bhtk = F.scaled_dot_product_attention(q_bhtk, k_bhtk, v_bhtk, is_causal=True)
        return self.proj(o_bhtk.transpose(1, 2).reshape(b, t, d))


class MLP(nn.Module):
    """Two bias-free linear layers around a GELU."""

    def __init__(self, shape: ModelShape) -> None:
        super().__init__()
        self.up = nn.Linear(shape.d_model, shape.d_ff, bias=False)
        self.down = nn.Linear(shape.d_ff, shape.d_model, bias=False)

    def forward(self, x_btd: torch.Tensor) -> torch.Tensor:
        return self.down(F.gelu(self.up(x_btd)))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln(x)), then x + mlp(ln(x)).

    The MLP is a routed mixture of experts (``trainers.moe.MoE``) when the shape has experts.
    """

    def __init__(self, shape: ModelShape, config: ModelConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(shape.d_model, bias=False)
        self.attn = CausalSelfAttention(shape, config)
        self.ln_2 = nn.LayerNorm(shape.d_model, bias=False)
        self.mlp: nn.Module = MLP(shape)
        if shape.n_experts:
            self.mlp = MoE(
                shape.d_model,
                shape.d_ff,
                shape.n_experts,
                shape.top_k,
                std=INIT_STD,
                out_std=INIT_STD / math.sqrt(2 * shape.n_layer),
            )

    def forward(
        self, x_btd: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None
    ) -> torch.Tensor:
        x_btd = x_btd + self.attn(self.ln_1(x_btd), rope)
        return x_btd + self.mlp(self.ln_2(x_btd))


class SigmaReparam(nn.Module):
    """sigmaReparam (Zhai et al. 2023): a linear layer whose weight is gamma / sigma(W) * W.

    sigma(W), the spectral norm, comes from torch's spectral-norm parametrisation (one power
    iteration per forward in training mode, its vectors kept as buffers so a resumed run
    continues exactly); gamma is a learned scalar initialised to the layer's initial spectral
    norm, so the layer starts as the plain one.
    """

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        with torch.no_grad():
            sigma0 = torch.linalg.matrix_norm(linear.weight.float(), ord=2)
        self.linear = torch.nn.utils.parametrizations.spectral_norm(linear, n_power_iterations=1)
        self.gamma = nn.Parameter(sigma0.to(linear.weight.dtype).reshape(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gamma * self.linear(x)


def apply_sigma_reparam(model: nn.Module) -> None:
    """Wrap the blocks' attention and dense-MLP linear layers in :class:`SigmaReparam`."""
    for block in model.blocks:  # type: ignore[union-attr]
        block.attn.qkv = SigmaReparam(block.attn.qkv)
        block.attn.proj = SigmaReparam(block.attn.proj)
        if isinstance(block.mlp, MLP):
            block.mlp.up = SigmaReparam(block.mlp.up)
            block.mlp.down = SigmaReparam(block.mlp.down)


class GPT(nn.Module):
    """Decoder-only transformer mapping token ids (b, t) to next-token logits (b, t, v)."""

    def __init__(self, shape: ModelShape, config: ModelConfig) -> None:
        super().__init__()
        if shape.d_model % shape.n_head:
            raise ValueError(
                f"shape: d_model={shape.d_model} not divisible by n_head={shape.n_head}"
            )
        self.shape = shape
        self.wte = nn.Embedding(shape.vocab_size, shape.d_model)
        self.wpe = (
            nn.Embedding(shape.seq_len, shape.d_model) if config.positional == "learned" else None
        )
        if config.positional == "rope":
            cos_tk, sin_tk = rope_tables(shape.seq_len, shape.d_model // shape.n_head)
            # Buffers, not parameters: they move with .to(device) and are not counted or trained.
            self.register_buffer("rope_cos", cos_tk, persistent=False)
            self.register_buffer("rope_sin", sin_tk, persistent=False)
        self.blocks = nn.ModuleList(Block(shape, config) for _ in range(shape.n_layer))
        self.ln_f = nn.LayerNorm(shape.d_model, bias=False)
        self.head = nn.Linear(shape.d_model, shape.vocab_size, bias=False)
        self._init_weights()
        if config.sigma_reparam:
            apply_sigma_reparam(self)
        if config.tie_embeddings:
            # Weight tying (Press & Wolf 2017), as GPT-2 does.
            self.head.weight = self.wte.weight

    def _init_weights(self) -> None:
        residual_std = INIT_STD / math.sqrt(2 * self.shape.n_layer)
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                std = residual_std if name.endswith(("attn.proj", "mlp.down")) else INIT_STD
                nn.init.normal_(module.weight, mean=0.0, std=std)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=INIT_STD)

    def forward(self, idx_bt: torch.Tensor) -> torch.Tensor:
        """Logits (b, t, v) for token ids (b, t); t must not exceed ``shape.seq_len``."""
        t = idx_bt.shape[1]
        x_btd = self.wte(idx_bt)
        rope = None
        if self.wpe is not None:
            x_btd = x_btd + self.wpe.weight[:t]
        else:
            rope = (self.rope_cos, self.rope_sin)
        for block in self.blocks:
            x_btd = block(x_btd, rope)
        return self.head(self.ln_f(x_btd))

    def aux_loss(self) -> torch.Tensor:
        """Mean MoE load-balancing loss over layers of the latest forward pass (0 when dense)."""
        losses = [block.mlp.aux_loss for block in self.blocks if isinstance(block.mlp, MoE)]
        if not losses:
            return torch.zeros((), device=self.wte.weight.device)
        return torch.stack(losses).mean()


def lm_loss(logits_btv: torch.Tensor, targets_bt: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy in nats/token (computed in fp32)."""
    return F.cross_entropy(logits_btv.flatten(0, 1).float(), targets_bt.flatten())
