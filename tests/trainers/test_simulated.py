"""The simulated trainer: a known law plus seeded noise, in milliseconds."""

from __future__ import annotations

import math
import time
from dataclasses import replace

import numpy as np
import pytest

from trainers.base import NullSink, RunPoint, RunSpec
from trainers.config import REPLICATION_CHINCHILLA, SimulatedConfig, TrainerConfig
from trainers.simulated import SimulatedTrainer


def _spec(seed: int = 0, *, noise: float = 0.01, n: int = 10**8, d: int = 2 * 10**9) -> RunSpec:
    config = TrainerConfig(kind="simulated", simulated=SimulatedConfig(noise=noise))
    point = RunPoint(n_params=n, tokens=d)
    return RunSpec(run_key=f"sim-{seed}", study="test", seed=seed, point=point, trainer=config)


def _truth(law: object, n: float, d: float) -> float:
    return float(law.predict(REPLICATION_CHINCHILLA, N=np.array([n]), D=np.array([d]))[0])  # type: ignore[attr-defined]


def test_plan_has_no_shape_and_6nd_flops() -> None:
    spec = _spec()
    plan = SimulatedTrainer(spec.trainer).plan(spec.point)
    assert plan.shape is None
    assert plan.n_params == plan.n_params_non_embedding == plan.n_params_active == 10**8
    assert plan.flops == 6.0 * 10**8 * 2 * 10**9 and plan.steps == 10
    assert plan.flop_convention == "6N"


def test_zero_noise_recovers_the_ground_truth(chinchilla_law: object) -> None:
    spec = _spec(noise=0.0)
    result = SimulatedTrainer(spec.trainer).train(spec, NullSink())
    assert result.final_loss == pytest.approx(_truth(chinchilla_law, 1e8, 2e9), rel=1e-12)
    by_hand = 1.8172 + 477.8 / 1e8**0.3473 + 2143.0 / 2e9**0.3672
    assert result.final_loss == pytest.approx(by_hand, rel=1e-9)
    for point in result.curve:
        assert point.train_loss == pytest.approx(_truth(chinchilla_law, 1e8, point.tokens))
    losses = [p.train_loss for p in result.curve]
    assert losses == sorted(losses, reverse=True)


def test_deterministic_under_the_seed(chinchilla_law: object) -> None:
    a, b, c = (SimulatedTrainer(_spec().trainer).train(_spec(s), NullSink()) for s in (7, 7, 8))
    assert a == b
    assert a.final_loss != c.final_loss


def test_runs_sharing_a_seed_draw_independent_noise(chinchilla_law: object) -> None:
    # every run of one replicate has the same seed: their noise must still be independent,
    # or a fit would see one common factor and report absurdly narrow intervals
    trainer = SimulatedTrainer(_spec().trainer)
    ratios = []
    for n in (10**7, 10**8, 10**9):
        spec = replace(_spec(0, n=n), run_key=f"run-{n}")
        ratios.append(trainer.train(spec, NullSink()).final_loss / _truth(chinchilla_law, n, 2e9))
    assert len({round(r, 12) for r in ratios}) == 3


def test_noise_has_the_configured_scale(chinchilla_law: object) -> None:
    truth = _truth(chinchilla_law, 1e8, 2e9)
    trainer = SimulatedTrainer(_spec().trainer)
    logs = [
        math.log(trainer.train(_spec(s, noise=0.05), NullSink()).final_loss / truth)
        for s in range(400)
    ]
    assert abs(np.mean(logs)) < 3 * 0.05 / math.sqrt(400)
    assert np.std(logs) == pytest.approx(0.05, rel=0.15)


def test_cost_is_simulated_not_spent(chinchilla_law: object) -> None:
    spec = _spec(n=10**10, d=10**11)
    trainer = SimulatedTrainer(spec.trainer)
    trainer.train(spec, NullSink())  # warm imports
    start = time.perf_counter()
    result = trainer.train(spec, NullSink())
    assert time.perf_counter() - start < 0.05
    assert result.wall_time_s == pytest.approx(2.0 + 6e21 / 1e13)
    assert result.tokens_per_s == pytest.approx(1e11 / result.wall_time_s)


def test_custom_params_override_the_default(chinchilla_law: object) -> None:
    params = {"E": 2.0, "A": 100.0, "B": 1000.0, "alpha": 0.3, "beta": 0.4}
    spec = _spec(noise=0.0)
    config = replace(spec.trainer, simulated=SimulatedConfig(noise=0.0, params=params))
    result = SimulatedTrainer(config).train(replace(spec, trainer=config), NullSink())
    assert result.final_loss == pytest.approx(2.0 + 100.0 / 1e8**0.3 + 1000.0 / 2e9**0.4)


def test_sleep_paces_a_run_without_changing_its_result(chinchilla_law: object) -> None:
    fast = _spec(3)
    slow = replace(fast, trainer=replace(fast.trainer, simulated=replace(fast.trainer.simulated, sleep_s=0.3)))
    t0 = time.perf_counter()
    paced = SimulatedTrainer(slow.trainer).train(slow, NullSink())
    assert time.perf_counter() - t0 >= 0.29
    assert paced.final_loss == SimulatedTrainer(fast.trainer).train(fast, NullSink()).final_loss


SPARSE_TRUTH = {"a": 400.0, "b": 410.0, "c": 0.1, "d": 50.0, "e": 1.7, "alpha": 0.34, "beta": 0.28,
                "gamma": 0.25, "lambda": -0.3, "delta": 0.5}


def test_a_sparsity_truth_takes_each_runs_sparsity_and_counts_active_flops() -> None:
    import laws

    config = TrainerConfig(kind="simulated", simulated=SimulatedConfig(law="sparsity", params=SPARSE_TRUTH, noise=0.0))
    trainer = SimulatedTrainer(config)
    law = laws.get_law("sparsity")
    losses = {}
    for s in (0.0, 0.75):
        point = RunPoint(n_params=10**9, tokens=2 * 10**10, sparsity=s)
        plan = trainer.plan(point)
        assert plan.n_params == 10**9 and plan.n_params_active == round(10**9 * (1 - s))
        assert plan.flops == pytest.approx(6.0 * 10**9 * (1 - s) * 2 * 10**10)
        spec = RunSpec(run_key=f"moe-{s}", study="test", seed=0, point=point, trainer=config)
        losses[s] = trainer.train(spec, NullSink()).final_loss
        truth = law.predict(SPARSE_TRUTH, N=np.array([1e9]), D=np.array([2e10]), S=np.array([s]))[0]
        assert losses[s] == pytest.approx(float(truth), rel=1e-12)
    assert losses[0.0] != losses[0.75]
    assert trainer.plan(RunPoint(n_params=10**9, tokens=10**9, sparsity=0.5)).flop_convention == "6N(1-S)"


@pytest.mark.parametrize(
    ("simulated", "key"),
    [
        ({"law": "kaplan"}, "trainer.simulated.law"),
        ({"law": "distillation", "params": {"x": 1.0}}, "trainer.simulated.law"),  # needs L_T
        ({"law": "sparsity"}, "trainer.simulated.params"),
        ({"law": "sparsity", "params": {"a": 1.0}}, "trainer.simulated.params"),
    ],
)
def test_a_bad_ground_truth_names_the_key(simulated: dict, key: str) -> None:
    from orchestrator.errors import StudyError
    from orchestrator.loading import study_from_dict

    with pytest.raises(StudyError) as info:
        study_from_dict({"name": "s", "trainer": {"kind": "simulated", "simulated": simulated},
                         "grid": {"N": [1e6], "D": [1e8]}})
    assert info.value.key == key


def _distill_config(noise: float = 0.0) -> TrainerConfig:
    from laws.chinchilla import BUSBRIDGE_SUPERVISED_PARAMS
    from laws.distillation import BUSBRIDGE_DISTILLATION_PARAMS

    simulated = SimulatedConfig(law="distillation", params=BUSBRIDGE_DISTILLATION_PARAMS,
                                supervised=BUSBRIDGE_SUPERVISED_PARAMS, noise=noise)
    return TrainerConfig(kind="simulated", simulated=simulated)


@pytest.mark.parametrize(("teacher_loss", "student_loss"), [(2.5149, 2.5428), (2.2509, 2.4238), (2.0036, 2.3760)])
def test_a_simulated_student_follows_the_distillation_law_at_its_teachers_loss(
    teacher_loss: float, student_loss: float, tmp_path
) -> None:
    """Busbridge et al. 2025, Table 6: a 546M student on 10.9B tokens distilled from teachers of
    546M, 1.82B and 7.75B parameters (their L_T given) reaches 2.5428, 2.4238 and 2.3760."""
    from trainers.simulated import write_result

    config = _distill_config()
    folder = tmp_path / "teacher"
    write_result(str(folder), "t", teacher_loss)  # what a simulated teacher leaves behind
    point = RunPoint(n_params=546_000_000, tokens=10_900_000_000, teacher="t")
    spec = RunSpec(run_key="s", study="test", seed=0, point=point, trainer=config,
                   teacher_checkpoint=str(folder / "result.json"))
    result = SimulatedTrainer(config).train(spec, NullSink())
    assert result.final_loss == pytest.approx(student_loss, abs=1.5e-4)
    assert result.metrics["teacher_eval_loss"] == teacher_loss
    # the student reads its teacher's folder, whichever of its files the scheduler names
    again = replace(spec, teacher_checkpoint=str(folder / "last.pt"))
    assert SimulatedTrainer(config).train(again, NullSink()).final_loss == result.final_loss


def test_a_simulated_teacher_is_a_supervised_run_that_records_its_loss(tmp_path) -> None:
    """The teachers follow Eq. 1 with Table 6's coefficients (L(546M, 10.9B) = 2.5149) and leave
    their final loss, noise included, as JSON in their checkpoint directory."""
    import json

    from trainers.simulated import RESULT_FILE, teacher_config

    config = teacher_config(_distill_config(noise=0.02))
    assert config.simulated.law == "chinchilla_gamma" and config.kind == "simulated"
    point = RunPoint(n_params=546_000_000, tokens=10_900_000_000)
    clean = replace(config, simulated=replace(config.simulated, noise=0.0))
    exact = SimulatedTrainer(clean).train(RunSpec(run_key="t", study="test", seed=0, point=point, trainer=clean), NullSink())
    assert exact.final_loss == pytest.approx(2.5149, abs=5e-4)
    spec = RunSpec(run_key="t", study="test", seed=0, point=point, trainer=config, checkpoint_dir=str(tmp_path / "t"))
    noisy = SimulatedTrainer(config).train(spec, NullSink())
    assert noisy.final_loss != exact.final_loss
    assert json.loads((tmp_path / "t" / RESULT_FILE).read_text()) == {"run_key": "t", "final_loss": noisy.final_loss}


def test_a_simulated_student_without_its_teachers_result_names_the_key(tmp_path) -> None:
    config = _distill_config()
    spec = RunSpec(run_key="s", study="test", seed=0, point=RunPoint(n_params=10**8, tokens=10**9, teacher="t"),
                   trainer=config)
    with pytest.raises(ValueError, match="^teacher_checkpoint: "):
        SimulatedTrainer(config).train(spec, NullSink())
    with pytest.raises(ValueError, match="^teacher_checkpoint: cannot read"):
        SimulatedTrainer(config).train(replace(spec, teacher_checkpoint=str(tmp_path / "last.pt")), NullSink())


@pytest.mark.parametrize(
    ("change", "key"),
    [
        (lambda sim: sim.pop("supervised"), "trainer.simulated.supervised"),
        (lambda sim: sim["supervised"].pop("gamma"), "trainer.simulated.supervised"),
        (lambda sim: sim.pop("params"), "trainer.simulated.params"),
        (lambda sim: sim["params"].pop("d1"), "trainer.simulated.params"),
        (lambda sim: sim.update(law="chinchilla", params={}), "grid.teachers"),
    ],
)
def test_a_simulated_distillation_study_without_its_truths_names_the_key(change, key: str) -> None:
    from laws.chinchilla import BUSBRIDGE_SUPERVISED_PARAMS
    from laws.distillation import BUSBRIDGE_DISTILLATION_PARAMS
    from orchestrator.errors import StudyError
    from orchestrator.loading import study_from_dict

    simulated = {"law": "distillation", "params": dict(BUSBRIDGE_DISTILLATION_PARAMS),
                 "supervised": dict(BUSBRIDGE_SUPERVISED_PARAMS)}
    raw = {"name": "s", "trainer": {"kind": "simulated", "simulated": simulated},
           "grid": {"N": [1e8], "D": [1e9], "teachers": {"N": [1e8], "D": [2e9]}},
           "laws": [{"family": "distillation"}]}
    study_from_dict(raw)  # complete, it loads
    change(simulated)
    with pytest.raises(StudyError) as info:
        study_from_dict(raw)
    assert info.value.key == key, str(info.value)
    # a supervised law is for a distillation truth only
    with pytest.raises(StudyError) as info:
        study_from_dict({"name": "s", "trainer": {"kind": "simulated", "simulated": {"supervised": {"E": 1.0}}},
                         "grid": {"N": [1e6], "D": [1e8]}})
    assert info.value.key == "trainer.simulated.supervised"
