"""Finetuning with pretraining-data injection: start from a run, track every domain's loss."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.trainers.conftest import RecordingSink
from trainers.base import RunPoint, RunResult, RunSpec
from trainers.config import TrainerConfig
from trainers.dense import DenseTrainer

ConfigFactory = Callable[..., TrainerConfig]


def _run(
    config: TrainerConfig, sink, steps: int, mixture: tuple[float, ...], **fields: object
) -> RunResult:
    spec = RunSpec(
        run_key=str(fields.pop("run_key", "finetune")),
        study="test",
        seed=0,
        point=RunPoint(
            n_params=12_000, tokens=steps * config.batch_size * config.seq_len, mixture=mixture
        ),
        trainer=config,
        **fields,  # type: ignore[arg-type]
    )
    return DenseTrainer(config).train(spec, sink)


def _evals(sink, domain: str) -> dict[int, float]:
    return {step: m[f"eval_loss/{domain}"] for step, m in sink.calls if f"eval_loss/{domain}" in m}


def test_finetuning_starts_from_the_pretrained_run_and_injection_protects_it(
    tiny_config: ConfigFactory, tmp_path: Path
) -> None:
    pretrained = _run(
        tiny_config(), RecordingSink(), 60, (1.0, 0.0), run_key="pre", checkpoint_dir=str(tmp_path)
    )
    config = tiny_config(eval_every=10)
    forgetting = {}
    for p in (0.0, 0.3):
        run_sink = RecordingSink()
        result = _run(config, run_sink, 40, (p, 1.0 - p), init_checkpoint=str(tmp_path))
        code, prose = _evals(run_sink, "code"), _evals(run_sink, "prose")
        assert sorted(code) == [0, 10, 20, 30, 40]
        # Step 0 is the pretrained model itself: the forgetting law's L_pt0.
        assert code[0] == pytest.approx(pretrained.eval_losses["code"], rel=1e-6)
        assert prose[40] < prose[0] - 0.2  # it learns the finetuning domain
        assert code[40] == result.eval_losses["code"]
        forgetting[p] = code[40] - code[0]
    # Injecting pretraining data keeps the pretraining loss lower. (Models this small and short
    # are far from converged, so finetuning on prose still improves code a little: the absolute
    # forgetting of the law only shows at scale.)
    assert forgetting[0.3] < forgetting[0.0] - 0.02


def test_init_checkpoint_must_match_the_shape(
    tiny_config: ConfigFactory, sink, tmp_path: Path
) -> None:
    _run(tiny_config(), sink, 2, (), run_key="pre", checkpoint_dir=str(tmp_path))
    spec = RunSpec(
        run_key="bigger",
        study="test",
        seed=0,
        point=RunPoint(n_params=40_000, tokens=512),
        trainer=tiny_config(),
        init_checkpoint=str(tmp_path),
    )
    with pytest.raises(ValueError, match="init_checkpoint"):
        DenseTrainer(tiny_config()).train(spec, sink)
