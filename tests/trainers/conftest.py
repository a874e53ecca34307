"""Shared fixtures of the trainer tests: tiny configurations and a recording metric sink."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace

import numpy as np
import pytest

from trainers.config import ModelConfig, TrainerConfig


class RecordingSink:
    """A metric sink that keeps every call, for assertions."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, dict[str, float]]] = []

    def log_metrics(self, metrics: Mapping[str, float], *, step: int) -> None:
        self.calls.append((step, dict(metrics)))

    def keys(self) -> set[str]:
        return {key for _, metrics in self.calls for key in metrics}


def _tiny_config(**overrides: object) -> TrainerConfig:
    model = overrides.pop("model", ModelConfig(head_dim=16, aspect_ratio=16.0))
    base = TrainerConfig(kind="dense", seq_len=32, batch_size=8, log_every=5, device="cpu")
    return replace(base, model=model, **overrides)  # type: ignore[arg-type]


@pytest.fixture
def tiny_config() -> Callable[..., TrainerConfig]:
    """Factory of dense configurations that train in about a second on one CPU thread."""
    return _tiny_config


@pytest.fixture
def sink() -> RecordingSink:
    """A fresh recording metric sink."""
    return RecordingSink()


class ChinchillaStandIn:
    """E + A/N^alpha + B/D^beta, used when ``laws.get_law`` is not importable."""

    name = "chinchilla"
    inputs = ("N", "D")

    def predict(self, params: Mapping[str, float], **inputs: object) -> np.ndarray:
        n = np.asarray(inputs["N"], dtype=np.float64)
        d = np.asarray(inputs["D"], dtype=np.float64)
        p = params
        return p["E"] + p["A"] / n ** p["alpha"] + p["B"] / d ** p["beta"]


@pytest.fixture
def chinchilla_law(monkeypatch: pytest.MonkeyPatch) -> object:
    """The real Chinchilla law from ``laws`` when available, else a stand-in patched in."""
    try:
        from laws import get_law

        return get_law("chinchilla")
    except ImportError:
        stand_in = ChinchillaStandIn()
        monkeypatch.setattr("trainers.simulated.load_law", lambda name: stand_in)
        return stand_in
