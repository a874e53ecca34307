"""Checkpoints: a run stopped mid-way and resumed equals an uninterrupted run."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from trainers.base import RunPoint, RunResult, RunSpec
from trainers.checkpoint import checkpoint_path, load_checkpoint, load_model, load_model_state
from trainers.config import DistillConfig, MoEConfig, TrainerConfig
from trainers.dense import DenseTrainer

ConfigFactory = Callable[..., TrainerConfig]
STEPS = 30


class Crash(RuntimeError):
    """Stands for the worker being killed."""


class CrashingSink:
    """Records metrics and raises when asked to log the training loss of ``crash_at``."""

    def __init__(self, crash_at: int | None = None) -> None:
        self.crash_at = crash_at
        self.steps: list[int] = []

    def log_metrics(self, metrics: Mapping[str, float], *, step: int) -> None:
        if "train_loss" in metrics:
            if step == self.crash_at:
                raise Crash(f"killed at step {step}")
            self.steps.append(step)


def _spec(config: TrainerConfig, checkpoint_dir: Path | None, **fields: object) -> RunSpec:
    return RunSpec(
        run_key="resume-test",
        study="test",
        seed=7,
        point=RunPoint(
            n_params=12_000, tokens=STEPS * config.batch_size * config.seq_len, mixture=(0.7, 0.3)
        ),
        trainer=config,
        checkpoint_dir="" if checkpoint_dir is None else str(checkpoint_dir),
        **fields,  # type: ignore[arg-type]
    )


def _same_outcome(a: RunResult, b: RunResult) -> None:
    assert a.final_loss == b.final_loss
    assert a.eval_losses == b.eval_losses
    assert a.curve == b.curve
    assert a.plan == b.plan


def test_resumed_run_equals_uninterrupted_run(tiny_config: ConfigFactory, tmp_path: Path) -> None:
    config = tiny_config()
    trainer = DenseTrainer(config)
    plain = trainer.train(_spec(config, None), CrashingSink())
    whole = trainer.train(_spec(config, tmp_path / "whole", checkpoint_every=10), CrashingSink())
    _same_outcome(plain, whole)  # writing checkpoints changes nothing

    resumed_dir = tmp_path / "resumed"
    spec = _spec(config, resumed_dir, checkpoint_every=10)
    with pytest.raises(Crash):
        trainer.train(spec, CrashingSink(crash_at=25))  # last checkpoint: step 20
    assert load_model_state(resumed_dir)[1] == 20
    second = CrashingSink()
    resumed = trainer.train(spec, second)
    assert second.steps == [25, 30]  # only the steps after the checkpoint were trained again
    _same_outcome(whole, resumed)
    final_whole, steps_whole = load_model_state(tmp_path / "whole")
    final_resumed, steps_resumed = load_model_state(resumed_dir / "last.pt")
    assert steps_whole == steps_resumed == STEPS
    assert final_whole.keys() == final_resumed.keys()
    assert all(torch.equal(final_whole[k], final_resumed[k]) for k in final_whole)


def test_finished_checkpoint_skips_training(tiny_config: ConfigFactory, tmp_path: Path) -> None:
    config = tiny_config()
    spec = _spec(config, tmp_path)
    first = DenseTrainer(config).train(spec, CrashingSink())
    sink = CrashingSink()
    again = DenseTrainer(config).train(spec, sink)
    assert sink.steps == []
    _same_outcome(first, again)


def test_checkpoints_load_with_weights_only(
    tiny_config: ConfigFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every checkpoint the product reads goes through ``torch.load(weights_only=True)``, which
    refuses pickled code: a resumed run, a finished run's model and its state dict."""
    config = tiny_config()
    spec = _spec(config, tmp_path)
    DenseTrainer(config).train(spec, CrashingSink())
    assert not list(tmp_path.glob(".last.pt.*"))  # no temporary file left behind
    real_load = torch.load
    calls: list[dict[str, object]] = []

    def spy(*args: object, **kwargs: object) -> object:
        calls.append(kwargs)
        return real_load(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(torch, "load", spy)
    state = load_checkpoint(checkpoint_path(tmp_path), "resume-test")
    assert state is not None and state.step == STEPS
    load_model(tmp_path)
    load_model_state(tmp_path)
    sink = CrashingSink()
    DenseTrainer(config).train(spec, sink)  # finished: read from the checkpoint, not trained
    assert sink.steps == []
    assert len(calls) >= 4
    assert all(c.get("weights_only") is True for c in calls), calls


def test_checkpoint_of_another_run_is_refused(tiny_config: ConfigFactory, tmp_path: Path) -> None:
    config = tiny_config()
    DenseTrainer(config).train(_spec(config, tmp_path), CrashingSink())
    other = replace(_spec(config, tmp_path), run_key="another-run")
    with pytest.raises(ValueError, match="another-run"):
        DenseTrainer(config).train(other, CrashingSink())


@pytest.mark.parametrize("kind", ["moe", "distill"])
def test_moe_and_distillation_runs_resume_exactly(kind: str, tiny_config: ConfigFactory, tmp_path: Path) -> None:
    """Routed experts (router, load-balancing loss) and a student on its teacher's logits
    resume bit-exactly too: the resumed run equals the uninterrupted one."""
    from trainers.distill import DistillTrainer
    from trainers.sparse import MoETrainer

    fields: dict[str, object] = {}
    if kind == "moe":
        config = tiny_config(kind="moe", moe=MoEConfig(experts=4))
        trainer: DenseTrainer = MoETrainer(config)
    else:
        teacher = tiny_config()
        DenseTrainer(teacher).train(
            replace(_spec(teacher, tmp_path / "teacher"), run_key="teacher"), CrashingSink()
        )
        config = tiny_config(kind="distill", distill=DistillConfig(weight=0.5, temperature=2.0))
        trainer = DistillTrainer(config)
        fields["teacher_checkpoint"] = str(tmp_path / "teacher")

    def spec(directory: Path | None) -> RunSpec:
        base = _spec(config, directory, checkpoint_every=10, **fields)
        if kind == "moe":  # top-2 of 4 experts, from 40k total parameters
            base = replace(base, point=replace(base.point, n_params=40_000, sparsity=0.5))
        return base

    whole = trainer.train(spec(tmp_path / "whole"), CrashingSink())
    assert whole.plan.shape is not None
    assert (whole.plan.shape.n_experts, whole.plan.shape.top_k) == ((4, 2) if kind == "moe" else (0, 0))
    resumed_dir = tmp_path / "resumed"
    with pytest.raises(Crash):
        trainer.train(spec(resumed_dir), CrashingSink(crash_at=25))
    assert load_model_state(resumed_dir)[1] == 20
    second = CrashingSink()
    resumed = trainer.train(spec(resumed_dir), second)
    assert second.steps == [25, 30]
    _same_outcome(whole, resumed)
    assert resumed.metrics == whole.metrics  # the teacher's loss L_T for distillation
    assert kind == "moe" or "teacher_eval_loss" in whole.metrics
    final_whole, _ = load_model_state(tmp_path / "whole")
    final_resumed, _ = load_model_state(resumed_dir)
    assert final_whole.keys() == final_resumed.keys()
    assert all(torch.equal(final_whole[k], final_resumed[k]) for k in final_whole)
    # and a run that is not interrupted ends where the checkpointed one does
    _same_outcome(trainer.train(spec(None), CrashingSink()), whole)
