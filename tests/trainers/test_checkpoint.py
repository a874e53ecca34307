"""Checkpoints: a run stopped mid-way and resumed equals an uninterrupted run."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from trainers.base import RunPoint, RunResult, RunSpec
from trainers.checkpoint import checkpoint_path, load_model_state
from trainers.config import TrainerConfig
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


def test_checkpoints_load_with_weights_only(tiny_config: ConfigFactory, tmp_path: Path) -> None:
    config = tiny_config()
    DenseTrainer(config).train(_spec(config, tmp_path), CrashingSink())
    payload = torch.load(checkpoint_path(tmp_path), weights_only=True)
    assert payload["run_key"] == "resume-test" and payload["step"] == STEPS
    assert not list(tmp_path.glob(".last.pt.*"))  # no temporary file left behind


def test_checkpoint_of_another_run_is_refused(tiny_config: ConfigFactory, tmp_path: Path) -> None:
    config = tiny_config()
    DenseTrainer(config).train(_spec(config, tmp_path), CrashingSink())
    other = replace(_spec(config, tmp_path), run_key="another-run")
    with pytest.raises(ValueError, match="another-run"):
        DenseTrainer(config).train(other, CrashingSink())
