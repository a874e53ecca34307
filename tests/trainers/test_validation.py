"""Impossible trainer values fail when a study is loaded, naming the key, not in every run."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from orchestrator.cli import main
from orchestrator.errors import StudyError
from orchestrator.loading import study_from_dict
from trainers.config import (
    DataConfig,
    DistillConfig,
    DomainConfig,
    MoEConfig,
    OptimConfig,
    SimulatedConfig,
    TrainerConfig,
)
from trainers.distill import DistillTrainer
from trainers.validation import validate_trainer_config

BASE = TrainerConfig()

#: (override, key, message) for values that used to fail only once a run trained.
BAD = [
    ("distill.weight=2", "distill.weight", "must be in [0, 1], got 2"),
    ("distill.weight=-0.5", "distill.weight", "must be in [0, 1], got -0.5"),
    ("distill.temperature=0", "distill.temperature", "must be positive, got 0"),
    ("optim.beta1=1.0", "optim.beta1", "must be in [0, 1), got 1"),
    ("optim.beta2=-0.1", "optim.beta2", "must be in [0, 1), got -0.1"),
    ("optim.eps=0", "optim.eps", "must be positive, got 0"),
    ("optim.weight_decay=-0.1", "optim.weight_decay", "must be 0 or more, got -0.1"),
    ("optim.grad_clip=-1", "optim.grad_clip", "must be 0 or more, got -1"),
    ("optim.reference_batch_size=0", "optim.reference_batch_size", "must be a positive number of sequences"),
    ("optim.reference_batch_size=1", "optim.reference_batch_size", "kappa = 16"),  # beta1 would be -0.6
    ("data.heldout_fraction=0", "data.heldout_fraction", "must be in (0, 1), got 0"),
    ("data.heldout_fraction=1", "data.heldout_fraction", "must be in (0, 1), got 1"),
    ("moe.experts=0", "moe.experts", "must be at least 1, got 0"),
    ("moe.aux_loss_coef=-0.01", "moe.aux_loss_coef", "must be 0 or more, got -0.01"),
    ("simulated.noise=-0.1", "simulated.noise", "must be 0 or more, got -0.1"),
    ("simulated.flops_per_second=0", "simulated.flops_per_second", "must be positive, got 0"),
    ("eval_every=-1", "eval_every", "must be 0 or more, got -1"),
]


def _study(**trainer: object) -> dict[str, object]:
    return {"name": "v", "trainer": trainer, "grid": {"N": [5e4], "D": [1e6]}}


@pytest.mark.parametrize(("override", "key", "message"), BAD, ids=[b[0] for b in BAD])
def test_study_load_names_the_trainer_key(override: str, key: str, message: str) -> None:
    with pytest.raises(StudyError) as info:
        study_from_dict(_study(), [f"trainer.{override}"])
    assert info.value.key == f"trainer.{key}"
    assert message in info.value.message


def test_domains_are_checked_under_their_own_name() -> None:
    with pytest.raises(StudyError) as info:
        study_from_dict(_study(data={"domains": {"code": {"source": "stdlib"}, "web": {"source": "wiki"}}}))
    assert info.value.key == "trainer.data.domains.web.source"
    assert "unknown source 'wiki'; valid sources: stdlib, pydoc, mlflow_docs, markov" in info.value.message
    with pytest.raises(StudyError) as info:
        study_from_dict(_study(data={"domains": {"chain": {"source": "markov", "symbols": 300}, "code": {}}}))
    assert str(info.value) == "trainer.data.domains.chain.symbols: must be in [2, 255], got 300"
    # the same symbols on a real source is ignored (it is a markov-only key)
    study_from_dict(_study(data={"domains": {"chain": {"source": "pydoc", "symbols": 300}, "code": {}}}))


def test_a_bad_distillation_weight_exits_2_at_validate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    study = tmp_path / "s.yaml"
    study.write_text(
        "name: d\n"
        "trainer: {kind: distill, distill: {weight: 2}}\n"
        "grid: {N: [5e4], D: [1e6], teachers: {N: [1e5], D: [1e6]}}\n"
    )
    assert main(["validate", str(study)]) == 2
    assert "trainer.distill.weight: must be in [0, 1], got 2" in capsys.readouterr().err


def test_defaults_and_every_example_value_are_valid() -> None:
    validate_trainer_config(BASE)
    validate_trainer_config(
        replace(
            BASE,
            optim=OptimConfig(beta1=0.0, ema=0.999, reference_batch_size=8, grad_clip=0.0, weight_decay=0.0),
            distill=DistillConfig(weight=0.0, temperature=4.0),
            moe=MoEConfig(experts=1, aux_loss_coef=0.0),
            simulated=SimulatedConfig(noise=0.0),
            data=DataConfig(domains={"m": DomainConfig(source="markov", symbols=2)}, heldout_fraction=0.5),
            batch_size=8,
        )
    )


def test_a_trainer_rejects_an_impossible_config_when_built() -> None:
    with pytest.raises(ValueError, match=r"^distill\.weight: must be in \[0, 1\], got 1\.5$"):
        DistillTrainer(replace(BASE, kind="distill", distill=DistillConfig(weight=1.5)))
