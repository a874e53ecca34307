"""Distillation: the KL term, the mixed objective, and a student trained on a teacher run."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from tests.trainers.conftest import RecordingSink, _tiny_config
from trainers.base import NullSink, RunPoint, RunSpec
from trainers.checkpoint import load_model
from trainers.config import DistillConfig, TrainerConfig
from trainers.dense import DenseTrainer
from trainers.distill import DistillTrainer, distill_objective, distillation_loss
from trainers.model import lm_loss

ConfigFactory = Callable[..., TrainerConfig]


def _spec(config: TrainerConfig, steps: int, **fields: object) -> RunSpec:
    return RunSpec(
        run_key=str(fields.pop("run_key", "student")),
        study="test",
        seed=int(fields.pop("seed", 0)),  # type: ignore[call-overload]
        point=RunPoint(n_params=12_000, tokens=steps * config.batch_size * config.seq_len),
        trainer=config,
        **fields,  # type: ignore[arg-type]
    )


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dense run trained for 60 steps, kept as a checkpoint."""
    config = _tiny_config()
    directory = tmp_path_factory.mktemp("teacher")
    spec = _spec(config, 60, run_key="teacher", checkpoint_dir=str(directory))
    DenseTrainer(config).train(spec, NullSink())
    return directory


def test_kl_is_zero_only_for_identical_logits() -> None:
    torch.manual_seed(0)
    z_btv = torch.randn(2, 5, 256) * 3
    for tau in (0.5, 1.0, 4.0):
        assert distillation_loss(z_btv, z_btv.clone(), tau).item() == pytest.approx(0, abs=1e-6)
        assert distillation_loss(z_btv + 1.0, z_btv, tau).item() == pytest.approx(0, abs=1e-6)
    other = torch.randn(2, 5, 256)
    assert distillation_loss(other, z_btv, 1.0).item() > 0.1


def test_student_identical_to_teacher_has_near_zero_kl(teacher_dir: Path) -> None:
    teacher, steps = load_model(teacher_dir)
    assert steps == 60
    student = copy.deepcopy(teacher).requires_grad_(True)
    window_bt = torch.randint(1, 128, (4, 33))
    inputs_bt, targets_bt = window_bt[:, :-1], window_bt[:, 1:]
    pure = distill_objective(teacher, DistillConfig())(student, inputs_bt, targets_bt)
    assert abs(pure.item()) < 1e-5
    half = distill_objective(teacher, DistillConfig(weight=0.5, temperature=2.0))
    mixed = half(student, inputs_bt, targets_bt)
    cross_entropy = lm_loss(student(inputs_bt), targets_bt)
    assert mixed.item() == pytest.approx(0.5 * cross_entropy.item(), rel=1e-4)
    mixed.backward()  # the teacher's logits are constants, the student gets gradients
    assert all(p.grad is not None for p in student.parameters())


def _first_train_loss(sink: RecordingSink) -> float:
    return next(
        metrics["train_loss"]
        for _, metrics in sorted(sink.calls, key=lambda c: c[0])
        if "train_loss" in metrics
    )


def test_distill_trainer_starting_from_its_teacher_logs_zero_kl(
    tiny_config: ConfigFactory, teacher_dir: Path
) -> None:
    # the training loss logged at step 1 is the KL of the student as it starts, before any update
    config = replace(tiny_config(kind="distill"), log_every=1)
    checkpoint = str(teacher_dir / "last.pt")
    same = RecordingSink()
    DistillTrainer(config).train(
        _spec(config, 2, teacher_checkpoint=checkpoint, init_checkpoint=checkpoint), same
    )
    assert abs(_first_train_loss(same)) < 1e-6  # the student starts from the teacher's own weights
    fresh = RecordingSink()
    DistillTrainer(config).train(_spec(config, 2, teacher_checkpoint=checkpoint), fresh)
    assert _first_train_loss(fresh) > 0.05  # a freshly initialised student of the same shape


def test_student_learns_from_teacher_and_reports_its_loss(
    tiny_config: ConfigFactory, teacher_dir: Path, sink
) -> None:
    config = tiny_config(kind="distill")
    spec = _spec(config, 40, seed=3, teacher_checkpoint=str(teacher_dir / "last.pt"))
    result = DistillTrainer(config).train(spec, sink)
    assert result.curve[0].train_loss > 2 * result.curve[-1].train_loss  # the KL falls
    teacher_run = DenseTrainer(tiny_config()).train(
        _spec(tiny_config(), 60, run_key="teacher", checkpoint_dir=str(teacher_dir)), sink
    )  # resumes the finished checkpoint: evaluation only
    assert result.metrics["teacher_eval_loss"] == pytest.approx(teacher_run.final_loss, rel=1e-6)
    for name, loss in teacher_run.eval_losses.items():
        assert result.metrics[f"teacher_eval_loss/{name}"] == pytest.approx(loss, rel=1e-6)
    assert {"teacher_eval_loss", "teacher_eval_loss/code"} <= sink.keys()
    assert math.isfinite(result.final_loss) and result.final_loss < math.log(256)


def test_distill_needs_a_teacher(tiny_config: ConfigFactory, sink) -> None:
    config = tiny_config(kind="distill")
    with pytest.raises(ValueError, match="teacher_checkpoint"):
        DistillTrainer(config).train(_spec(config, 2), sink)
    bad = replace(config, distill=DistillConfig(weight=1.5))
    with pytest.raises(ValueError, match="weight"):
        distill_objective(torch.nn.Linear(1, 1), bad.distill)  # type: ignore[arg-type]
