"""Offline text domains: determinism, disjoint splits, mixture proportions, eval windows."""

from __future__ import annotations

import math
import time
from dataclasses import replace

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
    simplex_grid,
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


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mixture_totals_are_exact_after_every_batch(seed: int) -> None:
    weights = (0.5, 0.27, 0.13, 0.1)
    domain = load_domain("pydoc", 0.05)
    sampler = MixtureSampler(
        [domain] * 4,
        weights,
        batch_size=7,
        seq_len=8,
        generator=torch.Generator().manual_seed(seed),
    )
    totals = [0, 0, 0, 0]
    for step in range(1, 301):
        counts = sampler.counts()
        assert sum(counts) == 7 and min(counts) >= 0
        totals = [a + b for a, b in zip(totals, counts, strict=True)]
        for total, w in zip(totals, weights, strict=True):
            assert abs(total - w * 7 * step) < 1.0  # within one sequence at every point of the run


def test_sampler_resumes_from_its_state() -> None:
    a = _sampler((0.7, 0.3), seed=5)
    for _ in range(7):
        a.sample()
    state = a.state_dict()
    expected = [a.sample() for _ in range(5)]
    b = _sampler((0.7, 0.3), seed=99)  # other seed: everything must come from the state
    b.load_state_dict(state)
    for want, (got_bt, got_counts) in zip(expected, (b.sample() for _ in range(5)), strict=True):
        assert torch.equal(want[0], got_bt) and want[1] == got_counts


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


def test_mlflow_docs_is_a_real_split_domain() -> None:
    domain = load_domain("mlflow_docs", 0.05)
    assert all(name.endswith(".md") for name in domain.train_docs + domain.heldout_docs)
    assert not set(domain.train_docs) & set(domain.heldout_docs)
    assert domain.train.numel() > 100_000 and domain.heldout.numel() > 1_000
    assert domain.entropy_rate is None
    text = domain.train.numpy().tobytes()
    assert b"mlflow" in text.lower() and text.count(b" the ") > 100  # English prose


def _bigram_conditional_entropy(tokens: torch.Tensor) -> float:
    """Plug-in estimate of H(X_t | X_{t-1}) in nats over pairs with no document marker."""
    x = tokens.long()
    prev, nxt = x[:-1], x[1:]
    keep = (prev > 0) & (nxt > 0)
    pairs = torch.bincount(prev[keep] * 256 + nxt[keep], minlength=256 * 256).double()
    joint = pairs.view(256, 256)
    cond = joint / joint.sum(1, keepdim=True).clamp_min(1)
    p = joint / joint.sum()
    return float(-(p * torch.where(joint > 0, cond.log(), torch.zeros_like(cond))).sum())


@pytest.mark.parametrize(("symbols", "concentration"), [(32, 0.1), (16, 2.0)])
def test_markov_entropy_rate_matches_its_text(symbols: int, concentration: float) -> None:
    config = DomainConfig(source="markov", symbols=symbols, concentration=concentration)
    domain = load_domain(config, 0.05)
    assert domain.entropy_rate is not None and 0.0 < domain.entropy_rate < math.log(symbols)
    assert set(domain.train.unique().tolist()) <= set(range(symbols + 1))
    measured = _bigram_conditional_entropy(domain.train)
    assert measured == pytest.approx(domain.entropy_rate, abs=0.01)
    assert _bigram_conditional_entropy(domain.heldout) == pytest.approx(
        domain.entropy_rate, abs=0.05
    )


def test_markov_domains_are_seeded() -> None:
    base = DomainConfig(source="markov", synthetic_bytes=1 << 16)
    a, b = load_domain(base, 0.1), load_domain(replace(base), 0.1)
    load_domain.cache_clear()
    again = load_domain(base, 0.1)
    other = load_domain(replace(base, markov_seed=1), 0.1)
    assert a is b and torch.equal(again.train, a.train) and again.heldout_docs == a.heldout_docs
    assert again.entropy_rate == a.entropy_rate
    assert other.entropy_rate != a.entropy_rate
    assert not torch.equal(other.train[:1000], a.train[:1000])


def test_markov_config_is_validated() -> None:
    with pytest.raises(ValueError, match="symbols"):
        load_domain(DomainConfig(source="markov", symbols=300), 0.05)
    with pytest.raises(ValueError, match="concentration"):
        load_domain(DomainConfig(source="markov", concentration=0.0), 0.05)


def test_simplex_grid() -> None:
    grid = simplex_grid(3, 0.1, min_weight=0.1)
    assert len(grid) == math.comb(7 + 2, 2)  # 7 free steps over 3 domains
    assert len(set(grid)) == len(grid)
    for h in grid:
        assert sum(h) == pytest.approx(1.0) and min(h) >= 0.1 - 1e-12
    assert (0.8, 0.1, 0.1) in grid and (0.1, 0.1, 0.8) in grid
    assert simplex_grid(2, 0.5) == [(1.0, 0.0), (0.5, 0.5), (0.0, 1.0)]
    with pytest.raises(ValueError, match="whole number of steps"):
        simplex_grid(3, 0.25, min_weight=0.1)
