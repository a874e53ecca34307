"""The dense trainer on real text: it learns, it is deterministic, it fails loudly."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace

import pytest
import torch

from trainers.base import RunPoint, RunSpec, TrainingDiverged
from trainers.config import DataConfig, DomainConfig, ModelConfig, OptimConfig, TrainerConfig
from trainers.data import load_domain
from trainers.dense import DenseTrainer

ConfigFactory = Callable[..., TrainerConfig]


def _spec(config: TrainerConfig, *, seed: int = 0, steps: int = 40, **point: object) -> RunSpec:
    tokens = steps * config.batch_size * config.seq_len
    return RunSpec(
        run_key=f"test-{seed}",
        study="test",
        seed=seed,
        point=RunPoint(n_params=int(point.pop("n_params", 12_000)), tokens=tokens, **point),  # type: ignore[arg-type]
        trainer=config,
    )


def test_plan_rounds_to_whole_steps(tiny_config: ConfigFactory) -> None:
    config = tiny_config()
    plan = DenseTrainer(config).plan(RunPoint(n_params=12_000, tokens=1000))
    assert plan.steps == 4 and plan.tokens == 4 * 8 * 32  # round(1000 / 256) = 4
    assert plan.flops == plan.flops_per_token * plan.tokens
    assert DenseTrainer(config).plan(RunPoint(n_params=12_000, tokens=1)).steps == 1
    with pytest.raises(ValueError, match="mixture"):
        DenseTrainer(config).plan(RunPoint(n_params=12_000, tokens=1000, mixture=(1.0,)))


def test_loss_goes_down_on_real_text(tiny_config: ConfigFactory, sink) -> None:
    config = tiny_config()
    result = DenseTrainer(config).train(_spec(config, steps=60), sink)
    assert result.curve[0].train_loss > result.curve[-1].train_loss + 0.5
    assert result.final_loss < 0.8 * math.log(256)  # well below a uniform guess over bytes
    assert set(result.eval_losses) == {"code", "prose"}
    assert result.final_loss == pytest.approx(sum(result.eval_losses.values()) / 2)
    assert [p.step for p in result.curve] == list(range(5, 61, 5))
    assert result.curve[-1].tokens == result.plan.tokens
    assert {"train_loss", "lr", "tokens", "eval_loss", "eval_loss/code"} <= sink.keys()
    assert result.tokens_per_s > 0 and result.wall_time_s > 0


def test_same_seed_same_result_other_seed_differs(tiny_config: ConfigFactory, sink) -> None:
    config = tiny_config()
    trainer = DenseTrainer(config)
    a = trainer.train(_spec(config, seed=3, steps=10), sink)
    b = trainer.train(_spec(config, seed=3, steps=10), sink)
    c = trainer.train(_spec(config, seed=4, steps=10), sink)
    assert a.final_loss == b.final_loss
    assert [p.train_loss for p in a.curve] == [p.train_loss for p in b.curve]
    assert a.final_loss != c.final_loss


def test_mixture_weights_the_final_loss(tiny_config: ConfigFactory, sink) -> None:
    config = tiny_config()
    result = DenseTrainer(config).train(_spec(config, steps=5, mixture=(0.9, 0.1)), sink)
    expected = 0.9 * result.eval_losses["code"] + 0.1 * result.eval_losses["prose"]
    assert result.final_loss == pytest.approx(expected)


def test_sigmoid_attention_trains(tiny_config: ConfigFactory, sink) -> None:
    config = tiny_config(
        model=ModelConfig(attention="sigmoid", head_dim=16, aspect_ratio=16.0),
    )
    result = DenseTrainer(config).train(_spec(config, steps=40), sink)
    assert result.curve[0].train_loss > result.curve[-1].train_loss + 0.5
    assert math.isfinite(result.final_loss)


def test_wsd_learned_positions_untied_train(tiny_config: ConfigFactory, sink) -> None:
    config = tiny_config(
        model=ModelConfig(positional="learned", tie_embeddings=False, head_dim=16),
        optim=OptimConfig(schedule="wsd"),
        data=replace(TrainerConfig().data, domains={}),
    )
    result = DenseTrainer(config).train(_spec(config, n_params=20_000, steps=20), sink)
    assert result.curve[0].train_loss > result.curve[-1].train_loss
    assert result.curve[-1].lr == pytest.approx(config.optim.lr * config.optim.min_lr_frac)


def test_divergence_raises(tiny_config: ConfigFactory, sink) -> None:
    config = tiny_config(optim=OptimConfig(lr=1e6, warmup_frac=0.0, grad_clip=0.0), log_every=1)
    with pytest.raises(TrainingDiverged):
        DenseTrainer(config).train(_spec(config, steps=20), sink)


def test_nan_loss_raises_at_the_next_log_point(
    tiny_config: ConfigFactory, sink, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("trainers.dense.lm_loss", lambda logits, targets: logits.sum() * torch.nan)
    config = tiny_config()
    with pytest.raises(TrainingDiverged, match="step 5"):
        DenseTrainer(config).train(_spec(config, steps=10), sink)


def test_thread_count_is_restored(tiny_config: ConfigFactory, sink) -> None:
    before = torch.get_num_threads()
    config = tiny_config(threads=1)
    DenseTrainer(config).train(_spec(config, steps=1), sink)
    assert torch.get_num_threads() == before


def test_every_domain_is_scored_and_the_markov_floor_holds(
    tiny_config: ConfigFactory, sink
) -> None:
    domains = {
        "code": DomainConfig(source="stdlib"),
        "prose": DomainConfig(source="pydoc"),
        "docs": DomainConfig(source="mlflow_docs"),
        "markov": DomainConfig(source="markov", symbols=16, concentration=0.1),
    }
    config = tiny_config(data=DataConfig(domains=domains, eval_tokens=4096))
    result = DenseTrainer(config).train(_spec(config, steps=60, mixture=(0.2, 0.2, 0.1, 0.5)), sink)
    assert list(result.eval_losses) == list(domains)
    expected = [0.2, 0.2, 0.1, 0.5]
    assert result.final_loss == pytest.approx(
        sum(w * result.eval_losses[d] for w, d in zip(expected, domains, strict=True))
    )
    assert {f"eval_loss/{d}" for d in domains} <= sink.keys()
    # No predictor beats the chain's entropy rate (up to the eval sample's noise); 60 tiny steps
    # already move well away from a uniform guess over bytes.
    floor = load_domain(domains["markov"], config.data.heldout_fraction).entropy_rate
    assert floor is not None
    assert floor - 0.05 < result.eval_losses["markov"] < math.log(256) - 1.0
