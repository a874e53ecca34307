"""Grid expansion and run identity."""

from __future__ import annotations

import math

import pytest

from orchestrator.errors import StudyError
from orchestrator.grid import expand, isoflop_sizes, run_key
from orchestrator.loading import study_from_dict
from trainers import RunPoint
from trainers.config import TrainerConfig


def _study(**grid) -> object:
    return study_from_dict({"name": "g", "seed": 1, "trainer": {"kind": "simulated"}, "grid": grid})


def test_n_cross_d_and_ratio() -> None:
    runs = expand(_study(N=[1e6, 1e7], D=[1e8, 1e9, 1e10]))
    assert len(runs) == 6
    assert {(r.spec.point.n_params, r.spec.point.tokens) for r in runs} == {
        (int(n), int(d)) for n in (1e6, 1e7) for d in (1e8, 1e9, 1e10)
    }
    runs = expand(_study(N=[1e6, 1e7], tokens_per_param=[10, 20]))
    assert sorted(r.spec.point.tokens for r in runs) == [int(1e7), int(2e7), int(1e8), int(2e8)]


def test_a_simplex_grid_of_mixtures_is_an_axis() -> None:
    runs = expand(_study(N=[1e6], D=[1e8], simplex={"step": 0.2, "min_weight": 0.1}))
    mixtures = sorted(r.spec.point.mixture for r in runs)
    assert [m[0] for m in mixtures] == pytest.approx([0.1, 0.3, 0.5, 0.7, 0.9])
    assert all(math.isclose(sum(m), 1.0) for m in mixtures)
    domains = {"a": {"source": "stdlib"}, "b": {"source": "pydoc"}, "c": {"source": "markov"}}
    three = {"name": "g", "trainer": {"kind": "simulated", "data": {"domains": domains}},
             "grid": {"N": [1e6], "D": [1e8], "simplex": {"step": 0.5}}}
    runs = expand(study_from_dict(three))  # one weight per configured domain
    assert len(runs) == 6 and all(len(r.spec.point.mixture) == 3 and math.isclose(sum(r.spec.point.mixture), 1) for r in runs)
    for grid, words in [
        ({"simplex": {"step": 0.3}}, "whole number of steps"),
        ({"simplex": {"step": 0.5}, "mixture": [[0.5, 0.5]]}, "not both"),
        ({"simplex": {"step": 0.0}}, "step must be > 0"),
    ]:
        with pytest.raises(StudyError) as info:
            _study(N=[1e6], D=[1e8], **grid)
        assert info.value.key == "grid.simplex" and words in str(info.value)


def test_mixture_and_replicates_cross() -> None:
    runs = expand(_study(N=[1e6], D=[1e8], mixture=[[0.5, 0.5], [0.8, 0.2]], replicates=3))
    assert len(runs) == 6
    assert {r.spec.seed for r in runs} == {1, 2, 3}
    assert {r.spec.point.mixture for r in runs} == {(0.5, 0.5), (0.8, 0.2)}
    assert len({r.spec.run_key for r in runs}) == 6


def test_isoflop_budgets_give_tokens_from_the_flop_convention() -> None:
    runs = expand(_study(isoflop={"budgets": [1e18, 1e19], "points_per_budget": 4, "span": 10}))
    assert len(runs) == 8
    for r in runs:
        assert r.budget in (1e18, 1e19)
        # simulated runs count C = 6 N D exactly
        assert r.plan.flops == pytest.approx(r.budget, rel=1e-6)
    sizes = sorted(r.spec.point.n_params for r in runs if r.budget == 1e18)
    assert sizes[-1] / sizes[0] == pytest.approx(10, rel=1e-3)
    # centred (geometrically) on the rule-of-thumb optimum sqrt(C / 120)
    assert math.sqrt(sizes[0] * sizes[-1]) == pytest.approx(math.sqrt(1e18 / 120), rel=1e-3)


def test_isoflop_sizes_single_point_is_the_centre() -> None:
    assert isoflop_sizes(1.2e9, 1, 4.0) == [pytest.approx(math.sqrt(1e7))]


def test_run_key_is_deterministic_and_sensitive() -> None:
    point = RunPoint(n_params=1000, tokens=5000)
    cfg = TrainerConfig()
    assert run_key(point, cfg, 0) == run_key(RunPoint(n_params=1000, tokens=5000), TrainerConfig(), 0)
    assert run_key(point, cfg, 0) != run_key(point, cfg, 1)
    assert run_key(point, cfg, 0) != run_key(RunPoint(n_params=1000, tokens=5001), cfg, 0)
    assert run_key(point, cfg, 0) != run_key(point, TrainerConfig(seq_len=64), 0)
    assert len(run_key(point, cfg, 0)) == 16


def test_expansion_is_stable_across_calls() -> None:
    a = [r.spec.run_key for r in expand(_study(N=[1e6, 1e7], D=[1e8, 1e9]))]
    b = [r.spec.run_key for r in expand(_study(N=[1e6, 1e7], D=[1e8, 1e9]))]
    assert a == b


def test_dense_budget_too_small_for_one_step() -> None:
    study = study_from_dict({"name": "tiny", "grid": {"isoflop": {"budgets": [1e6]}}})
    with pytest.raises(StudyError) as info:
        expand(study)
    assert info.value.key == "grid.isoflop.budgets[0]"


def test_dense_plan_records_exact_shapes() -> None:
    study = study_from_dict({"name": "d", "grid": {"N": [5e4, 2e5], "D": [1e6]}})
    runs = expand(study)
    for r in runs:
        assert r.plan.shape is not None
        assert r.plan.n_params > 0
        assert r.plan.tokens % (study.trainer.batch_size * study.trainer.seq_len) == 0


def test_sizes_that_resolve_to_the_same_model_are_one_run() -> None:
    # 20e3 and 21e3 parameters round to the same shape at this head_dim/aspect ratio: one run.
    study = study_from_dict(
        {
            "name": "g",
            "trainer": {"kind": "dense", "seq_len": 64, "model": {"head_dim": 16, "aspect_ratio": 16}},
            "grid": {"N": [20e3, 21e3], "D": [1e6]},
        }
    )
    runs = expand(study)
    shapes = {r.plan.shape for r in runs}
    assert len(shapes) == 1
    assert len(runs) == 1
    # the identity still separates genuinely different models
    bigger = study_from_dict(
        {
            "name": "g",
            "trainer": {"kind": "dense", "seq_len": 64, "model": {"head_dim": 16, "aspect_ratio": 16}},
            "grid": {"N": [20e3, 80e3], "D": [1e6]},
        }
    )
    assert len({r.spec.run_key for r in expand(bigger)}) == 2


def test_sparsity_axis_is_crossed_and_sets_d_per_point_in_isoflop_grids() -> None:
    base = {
        "name": "moe",
        "trainer": {"kind": "moe", "seq_len": 64, "model": {"head_dim": 16, "aspect_ratio": 16}, "moe": {"experts": 4}},
    }
    runs = expand(study_from_dict({**base, "grid": {"N": [3e4], "D": [1e6], "sparsity": [0.0, 0.5, 0.75]}}))
    assert sorted(r.spec.point.sparsity for r in runs) == [0.0, 0.5, 0.75]
    assert len({r.spec.run_key for r in runs}) == 3
    # same total N, fewer active parameters: fewer FLOPs per token
    flops = {r.spec.point.sparsity: r.plan.flops_per_token for r in runs}
    assert flops[0.0] > flops[0.5] > flops[0.75]
    iso = expand(study_from_dict({**base, "grid": {"isoflop": {"budgets": [1e11], "points_per_budget": 1}, "sparsity": [0.0, 0.75]}}))
    by_s = {r.spec.point.sparsity: r for r in iso}
    # at one budget the sparser model trains on more tokens, and both spend the budget
    assert by_s[0.75].plan.tokens > by_s[0.0].plan.tokens
    for r in iso:
        assert r.plan.flops == pytest.approx(1e11, rel=0.01)


def test_sparsity_needs_the_moe_trainer() -> None:
    with pytest.raises(StudyError) as err:
        study_from_dict({"name": "x", "grid": {"N": [3e4], "D": [1e6], "sparsity": [0.5]}})
    assert err.value.key == "grid.sparsity"
