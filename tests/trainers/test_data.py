"""Offline text domains: determinism, disjoint splits, mixture proportions, eval windows."""

from __future__ import annotations

import time

import pytest
import torch

from trainers.config import DataConfig, DomainConfig
from trainers.data import (
    MAX_DOMAIN_BYTES,
    MixtureSampler,
    eval_windows,
    load_domain,
    load_domains,
    mixture_weights,
)


def test_default_domains_load_fast_and_are_capped() -> None:
    load_domain.cache_clear()
    start = time.perf_counter()
    domains = load_domains(DataConfig())
    assert time.perf_counter() - start < 2.0
    assert list(domains) == ["code", "prose"]
    for domain in domains.values():
        assert domain.train.dtype == torch.uint8
        assert 100_000 < domain.train.numel() + domain.heldout.numel() <= MAX_DOMAIN_BYTES + 10_000
        assert domain.heldout.numel() > 8192
    assert load_domains(DataConfig())["code"] is domains["code"]  # cached per process


def test_splits_are_disjoint_deterministic_and_sized() -> None:
    domain = load_domain("stdlib", 0.05)
    assert not set(domain.train_docs) & set(domain.heldout_docs)
    excluded = {"site-packages", "test", "tests", "idle_test", "pydoc_data"}
    for name in domain.train_docs + domain.heldout_docs:
        assert name.endswith(".py") and not excluded & set(name.split("/")[:-1])
    load_domain.cache_clear()
    again = load_domain("stdlib", 0.05)
    assert again.heldout_docs == domain.heldout_docs
    assert torch.equal(again.train, domain.train)
    share = len(domain.heldout_docs) / (len(domain.train_docs) + len(domain.heldout_docs))
    assert 0.02 < share < 0.1
    bigger = load_domain("stdlib", 0.2)
    assert set(domain.heldout_docs) <= set(bigger.heldout_docs)  # same hash, higher threshold


def test_unknown_source_lists_valid_ones() -> None:
    with pytest.raises(ValueError, match="stdlib, pydoc"):
        load_domains(DataConfig(domains={"web": DomainConfig(source="common_crawl")}))


def test_mixture_weights_validate_and_normalise() -> None:
    assert mixture_weights((), 2) == (0.5, 0.5)
    assert mixture_weights((3.0, 1.0), 2) == (0.75, 0.25)
    with pytest.raises(ValueError, match="2 domains"):
        mixture_weights((1.0,), 2)
    with pytest.raises(ValueError, match=">= 0"):
        mixture_weights((1.0, -0.5), 2)


def _sampler(weights: tuple[float, ...], seed: int, batch_size: int = 10) -> MixtureSampler:
    domains = list(load_domains(DataConfig()).values())
    return MixtureSampler(
        domains,
        mixture_weights(weights, len(domains)),
        batch_size=batch_size,
        seq_len=16,
        generator=torch.Generator().manual_seed(seed),
    )


def test_mixture_proportions_hold_in_expectation() -> None:
    sampler = _sampler((0.83, 0.17), seed=0, batch_size=8)
    totals = [0, 0]
    for _ in range(2000):
        counts = sampler.counts()
        assert sum(counts) == 8
        assert counts[0] in (6, 7)  # never more than one sequence from w * B = 6.64
        totals = [a + b for a, b in zip(totals, counts, strict=True)]
    assert totals[0] / sum(totals) == pytest.approx(0.83, abs=0.005)


def test_batches_come_from_their_domains() -> None:
    domains = list(load_domains(DataConfig()).values())
    sampler = _sampler((0.8, 0.2), seed=1)
    window_bt, counts = sampler.sample()
    assert window_bt.shape == (10, 17) and window_bt.dtype == torch.int64
    assert counts == [8, 2]
    for row, domain in zip(window_bt, [domains[0]] * 8 + [domains[1]] * 2, strict=True):
        assert bytes(row.to(torch.uint8).tolist()) in domain.train.numpy().tobytes()


def test_sampler_is_seeded() -> None:
    a, b, c = _sampler((), 0), _sampler((), 0), _sampler((), 1)
    first = [a.sample()[0] for _ in range(3)]
    assert all(torch.equal(x, b.sample()[0]) for x in first)
    assert not torch.equal(first[0], c.sample()[0])


def test_eval_windows_are_fixed_and_held_out() -> None:
    domain = load_domain("pydoc", 0.05)
    windows = eval_windows(domain, eval_tokens=1000, seq_len=64)
    assert windows.shape == (16, 65)
    assert torch.equal(windows, eval_windows(domain, eval_tokens=1000, seq_len=64))
    heldout = domain.heldout.long()
    assert torch.equal(windows[0], heldout[:65])
    assert torch.equal(windows[-1], heldout[-65:])
