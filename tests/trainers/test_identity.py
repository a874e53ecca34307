"""A run's identity: existing configurations keep the run keys they always had."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from importlib.metadata import version
from pathlib import Path

import pytest

from orchestrator.grid import run_key
from trainers.base import RunPoint
from trainers.config import (
    DataConfig,
    DistillConfig,
    DomainConfig,
    MoEConfig,
    OptimConfig,
    SimulatedConfig,
    TrainerConfig,
)
from trainers.identity import NEUTRAL_DEFAULTS, changed_texts, config_identity
from trainers.sources import SOURCES, VERSIONED_SOURCES, source_text

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


def test_a_runs_pace_is_not_its_identity() -> None:
    paced = TrainerConfig(kind="simulated", simulated=SimulatedConfig(sleep_s=2.5))
    # a study run slowly for a demo and resumed at full speed finds its finished runs
    assert run_key(POINT, paced, 0) == PINNED["simulated"][1]
    # what the simulated run computes still counts
    noisier = TrainerConfig(kind="simulated", simulated=SimulatedConfig(sleep_s=2.5, noise=0.05))
    assert run_key(POINT, noisier, 0) != PINNED["simulated"][1]


MLFLOW_DOCS = DomainConfig(source="mlflow_docs")


@pytest.fixture
def fresh_texts() -> Iterator[None]:
    """Source texts read anew in the test, and again after it (they are cached per process)."""
    source_text.cache_clear()
    yield
    source_text.cache_clear()


def test_mlflow_docs_text_has_the_expected_size(fresh_texts: None) -> None:
    text = source_text(MLFLOW_DOCS)
    # the Markdown files of mlflow 3.17.2: 38 documents, 317,752 bytes; a patch release may move
    # these a little, a broken install (or a package without its docs) a lot
    assert 30 <= text.documents <= 60
    assert 200_000 <= text.bytes <= 500_000
    assert len(text.digest) == 32 and text == source_text(MLFLOW_DOCS)


def test_the_pinned_mlflow_docs_are_the_text_run_keys_were_made_on(fresh_texts: None) -> None:
    if version("mlflow") != "3.17.2":
        pytest.skip(f"mlflow {version('mlflow')} is installed; the reference text is 3.17.2's")
    text = source_text(MLFLOW_DOCS)
    assert (text.documents, text.bytes) == (38, 317_752)
    assert text.digest == VERSIONED_SOURCES["mlflow_docs"]
    assert changed_texts(PINNED["mlflow_docs"][0]) == {}


def test_other_mlflow_docs_text_makes_other_runs(fresh_texts: None, monkeypatch: pytest.MonkeyPatch) -> None:
    real = SOURCES["mlflow_docs"]
    original = run_key(POINT, PINNED["mlflow_docs"][0], 0)

    def patched(domain: DomainConfig) -> list[tuple[str, bytes | Path]]:
        docs = real(domain)
        name, content = docs[0]
        data = content.read_bytes() if isinstance(content, Path) else content
        return [(name, data + b"\n"), *docs[1:]]  # one more newline at the end of one document

    monkeypatch.setitem(SOURCES, "mlflow_docs", patched)
    source_text.cache_clear()
    changed = run_key(POINT, PINNED["mlflow_docs"][0], 0)
    assert changed != original
    assert set(changed_texts(PINNED["mlflow_docs"][0])) == {"docs"}
    assert config_identity(PINNED["mlflow_docs"][0])["data_text"]["docs"] == source_text(MLFLOW_DOCS).digest
    # the stdlib and pydoc domains never carry their text in the key
    assert run_key(POINT, PINNED["default"][0], 0) == PINNED["default"][1]


def test_a_text_digest_sees_names_contents_and_boundaries(monkeypatch: pytest.MonkeyPatch, fresh_texts: None) -> None:
    listings = {
        "a": [("x", b"hello"), ("y", b"world")],
        "renamed": [("z", b"hello"), ("y", b"world")],
        "edited": [("x", b"hello"), ("y", b"World")],
        "moved": [("x", b"hellow"), ("y", b"orld")],  # same bytes joined, another boundary
    }
    digests = {}
    for label, docs in listings.items():
        monkeypatch.setitem(SOURCES, "pydoc", lambda domain, docs=docs: docs)
        source_text.cache_clear()
        digests[label] = source_text(DomainConfig(source="pydoc")).digest
    assert len(set(digests.values())) == len(listings)
