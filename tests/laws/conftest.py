"""Shared data for the law tests: the Chinchilla replication points and their fit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import laws

DATA = Path(__file__).resolve().parents[1] / "data" / "epoch_chinchilla.csv"


def replication_data() -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The 240 points of Besiroglu et al. 2024 (the 5 rows with loss > 3.44 dropped)."""
    inputs, loss = laws.load_table(DATA, {"N": "Model Size", "C": "Training FLOP", "loss": "loss"})
    keep = loss <= 3.44
    return {k: v[keep] for k, v in inputs.items()}, loss[keep]


@pytest.fixture(scope="session")
def replication() -> tuple[dict[str, np.ndarray], np.ndarray]:
    return replication_data()


@pytest.fixture(scope="session")
def replication_fit(replication) -> laws.LawFit:
    inputs, loss = replication
    return laws.fit("chinchilla", inputs, loss)


def nd_design(n_sizes: int = 8, n_ratios: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """A Chinchilla-like grid of runs: sizes 70M..16B, 5..200 tokens per parameter."""
    n, tpp = np.meshgrid(np.geomspace(7e7, 1.6e10, n_sizes), np.geomspace(5, 200, n_ratios))
    return n.ravel(), (n * tpp).ravel()
