"""A run's identity: existing configurations keep the run keys they always had."""

from __future__ import annotations

from dataclasses import replace

import pytest

from orchestrator.grid import run_key
from trainers.base import RunPoint
from trainers.config import (
    DataConfig,
    DistillConfig,
    DomainConfig,
    MoEConfig,
    OptimConfig,
    TrainerConfig,
)
from trainers.identity import NEUTRAL_DEFAULTS, config_identity

POINT = RunPoint(n_params=100_000, tokens=1_000_000)

#: Keys these configurations had before any field of ``identity.NEUTRAL_DEFAULTS`` existed.
#: A change here means finished runs of every existing study would train again.
PINNED = {
    "default": (TrainerConfig(), "dcdaeabcb8c316e1"),
    "moe": (TrainerConfig(kind="moe", moe=MoEConfig(experts=4, hold="active")), "b743640edacadfb9"),
    "ema": (TrainerConfig(optim=OptimConfig(ema=0.999, ema_batch_size=32)), "e1b1031a5282a627"),
    "distill": (TrainerConfig(kind="distill", distill=DistillConfig(weight=0.5)), "9cbf2bc508839662"),
    "mlflow_docs": (
        TrainerConfig(
            data=DataConfig(
                domains={"code": DomainConfig(source="stdlib"), "docs": DomainConfig(source="mlflow_docs")}
            )
        ),
        "7650d6a20c909aa5",
    ),
    "simulated": (TrainerConfig(kind="simulated"), "c97c3c40bfd3ce4b"),
}


@pytest.mark.parametrize("name", sorted(PINNED))
def test_existing_configurations_keep_their_run_keys(name: str) -> None:
    config, key = PINNED[name]
    assert run_key(POINT, config, 0) == key


def test_new_keys_at_their_default_are_left_out_and_count_once_set() -> None:
    identity = config_identity(TrainerConfig())
    for path in NEUTRAL_DEFAULTS:
        node = identity
        for name in path[:-1]:
            node = node[name]
        assert path[-1] not in node
    assert "compile" not in identity
    scaled = TrainerConfig(optim=OptimConfig(reference_batch_size=16))
    assert config_identity(scaled)["optim"]["reference_batch_size"] == 16
    assert run_key(POINT, scaled, 0) != run_key(POINT, TrainerConfig(), 0)
    assert run_key(POINT, scaled, 0) != run_key(POINT, replace(scaled, optim=OptimConfig(reference_batch_size=32)), 0)
