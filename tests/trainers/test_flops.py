"""FLOP conventions against the matmul FLOPs PyTorch counts on the real model."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from trainers.config import ModelConfig, TrainerConfig
from trainers.flops import flops_per_token
from trainers.model import GPT
from trainers.shapes import count_params, derive_shape


def _counted_training_flops(model: GPT, batch: int, seq_len: int) -> int:
    """Matmul FLOPs of one forward and backward pass, counted by torch's FlopCounterMode."""
    idx_bt = torch.randint(0, 256, (batch, seq_len))
    # The math backend decomposes attention into bmm calls the counter sees (the fused CPU
    # kernel is not registered with it).
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(idx_bt).float().sum().backward()
    return counter.get_total_flops()


@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("positional", ["rope", "learned"])
@pytest.mark.parametrize("attention", ["softmax", "sigmoid"])
def test_6n_attn_matches_counted_matmuls(tie: bool, positional: str, attention: str) -> None:
    config = TrainerConfig(
        seq_len=32,
        flop_convention="6N+attn",
        model=ModelConfig(tie_embeddings=tie, positional=positional, attention=attention),
    )
    shape = derive_shape(120_000, config)
    torch.manual_seed(0)
    model = GPT(shape, config.model)
    batch = 2
    counted = _counted_training_flops(model, batch, config.seq_len)
    predicted = flops_per_token(shape, config) * batch * config.seq_len
    # Intended difference: the convention charges 6 FLOPs per norm weight (elementwise ops the
    # counter ignores). Everything else (blocks, head, attention square) must match exactly.
    norm_weights = sum(
        p.numel() for name, p in model.named_parameters() if "ln_" in name or "_norm" in name
    )
    assert predicted - counted == 6 * norm_weights * batch * config.seq_len
    assert abs(predicted / counted - 1) < 0.01


def test_6n_is_six_times_total_params() -> None:
    config = TrainerConfig(flop_convention="6N")
    shape = derive_shape(1_000_000, config)
    total, _ = count_params(shape, config)
    assert flops_per_token(shape, config) == 6.0 * total


def test_6n_attn_terms_by_hand() -> None:
    config = TrainerConfig(seq_len=128, flop_convention="6N+attn")
    shape = derive_shape(115_000, config)  # d=64, 2 layers, tied
    _, non_embedding = count_params(shape, config)
    expected = 6 * non_embedding + 6 * 64 * 256 + 12 * 2 * 64 * 128
    assert flops_per_token(shape, config) == expected
