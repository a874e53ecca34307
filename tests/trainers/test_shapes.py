"""The shape rule and exact parameter counting."""

from __future__ import annotations

import math
import time
from dataclasses import replace

import pytest
import torch

from trainers.config import ModelConfig, TrainerConfig
from trainers.model import GPT
from trainers.shapes import N_TOLERANCE, count_params, derive_shape


def _config(**model: object) -> TrainerConfig:
    return TrainerConfig(seq_len=64, model=ModelConfig(**model))  # type: ignore[arg-type]


@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("positional", ["rope", "learned"])
@pytest.mark.parametrize("attention", ["softmax", "sigmoid"])
def test_counts_equal_the_built_model(tie: bool, positional: str, attention: str) -> None:
    config = _config(tie_embeddings=tie, positional=positional, attention=attention, head_dim=16)
    for n_target in (12_000, 3e4, 1e5, 4e5):
        shape = derive_shape(int(n_target), config)
        with torch.device("meta"):  # no memory, no init cost
            model = GPT(shape, config.model)
        params = list(model.parameters())  # tied weights appear once
        embedding = model.wte.weight.numel() + (
            model.wpe.weight.numel() if model.wpe is not None else 0
        )
        total = sum(p.numel() for p in params)
        assert count_params(shape, config) == (total, total - embedding)


def test_counts_for_hand_picked_shapes() -> None:
    # d=64, 2 layers, tied, rope: 256*64 embedding + 2*(2*64 + 12*64^2) blocks + 64 final norm.
    config = _config()
    shape = derive_shape(115_000, config)
    assert (shape.d_model, shape.n_layer, shape.n_head, shape.d_ff) == (64, 2, 2, 256)
    assert count_params(shape, config) == (16384 + 2 * (128 + 49152) + 64, 2 * (128 + 49152) + 64)


@pytest.mark.parametrize("n_target", [5e3, 3e4, 1e5, 1e6, 3e7, 1e9, 7e10, 1e11])
def test_rule_is_close_deterministic_and_well_formed(n_target: float) -> None:
    config = _config(head_dim=8 if n_target < 1e4 else 32)
    shape = derive_shape(int(n_target), config)
    assert shape == derive_shape(int(n_target), config)
    assert shape.d_model % config.model.head_dim == 0
    assert shape.n_head * config.model.head_dim == shape.d_model
    assert shape.d_ff == config.model.mlp_ratio * shape.d_model
    assert shape.n_layer >= 1 and shape.vocab_size == 256 and shape.seq_len == 64
    total, _ = count_params(shape, config)
    # Small models are coarse (one layer or head is a big step); from 1e6 up the tolerance holds.
    bound = N_TOLERANCE if n_target >= 1e6 else math.log(2.0)
    assert abs(math.log(total / n_target)) <= bound


def test_large_models_follow_the_aspect_ratio() -> None:
    config = _config()
    for n_target in (1e8, 1e9, 1e10, 1e11):
        shape = derive_shape(int(n_target), config)
        assert abs(math.log(shape.d_model / shape.n_layer / 32.0)) < 0.05


def test_counts_grow_with_the_target() -> None:
    config = _config()
    counts = [count_params(derive_shape(int(10**e), config), config)[0] for e in range(5, 11)]
    assert counts == sorted(counts)


def test_rule_is_fast_at_every_scale() -> None:
    config = _config()
    start = time.perf_counter()
    for e in range(4, 12):
        derive_shape(int(3 * 10**e) if e < 11 else 10**11, config)
    assert time.perf_counter() - start < 0.5


def test_too_small_target_names_the_value() -> None:
    with pytest.raises(ValueError, match="1000"):
        derive_shape(1000, _config())
    with pytest.raises(ValueError, match="n_params"):
        derive_shape(0, _config())


def test_count_rejects_inconsistent_shapes() -> None:
    config = _config()
    shape = replace(derive_shape(100_000, config), d_ff=100)
    with pytest.raises(ValueError, match="d_ff"):
        count_params(shape, config)
    with pytest.raises(ValueError, match="n_head"):
        count_params(replace(derive_shape(100_000, config), n_head=3), config)
