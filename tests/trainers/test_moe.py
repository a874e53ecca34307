"""Mixture of experts: routing against a dense reference, exact counts and FLOPs, training."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import replace

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from trainers.base import RunPoint, RunSpec
from trainers.config import ModelConfig, MoEConfig, TrainerConfig
from trainers.flops import flops_per_token
from trainers.model import GPT
from trainers.moe import MoE, grouped_dispatch, moe_reference
from trainers.shapes import count_active_params, count_params, derive_shape
from trainers.sparse import MoETrainer, plan_moe, top_k_for

ConfigFactory = Callable[..., TrainerConfig]


@pytest.mark.parametrize("dispatch", ["grouped", "split"])
@pytest.mark.parametrize(("experts", "top_k"), [(6, 1), (6, 2), (4, 4), (8, 3)])
def test_sorted_dispatch_matches_the_dense_reference(
    experts: int, top_k: int, dispatch: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if dispatch == "split":  # the path of CUDA and of compiled graphs, here on CPU
        monkeypatch.setattr("trainers.moe.grouped_dispatch", lambda x, w: False)
    else:
        assert grouped_dispatch(torch.zeros(1, 16), torch.zeros(experts, 16, 24))
    torch.manual_seed(experts * 10 + top_k)
    moe = MoE(16, 24, experts, top_k, std=0.3, out_std=0.3)
    x_btd = torch.randn(3, 7, 16, requires_grad=True)
    fast = moe(x_btd)
    fast_grads = torch.autograd.grad(fast.square().sum(), [x_btd, *moe.parameters()])
    slow = moe_reference(moe, x_btd)
    slow_grads = torch.autograd.grad(slow.square().sum(), [x_btd, *moe.parameters()])
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-6)
    for a, b in zip(fast_grads, slow_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    # The router is trained by the language-modelling loss too (gates are its probabilities).
    assert moe.router.weight in set(moe.parameters())
    assert fast_grads[1].abs().sum() > 0


def test_grouped_dispatch_only_where_it_is_exact_and_traceable() -> None:
    x_ad, w_edf = torch.zeros(8, 16), torch.zeros(4, 16, 64)
    assert grouped_dispatch(x_ad, w_edf)
    assert not grouped_dispatch(x_ad.bfloat16(), w_edf.bfloat16())  # float32 only
    assert not grouped_dispatch(torch.zeros(8, 6), torch.zeros(4, 6, 24))  # 24-byte rows
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not grouped_dispatch(x_ad, w_edf)
    # the meta function of torch's grouped matmul refuses float32: compiled graphs split
    assert not torch.compile(lambda x: torch.tensor(grouped_dispatch(x, w_edf)), backend="eager", fullgraph=True)(x_ad)


def test_every_token_uses_exactly_top_k_experts() -> None:
    torch.manual_seed(0)
    moe = MoE(8, 16, 5, 2, std=0.5, out_std=0.5)
    _, gate_nk, expert_nk = moe.route(torch.randn(40, 8))
    assert expert_nk.shape == (40, 2)
    assert all(len(set(row.tolist())) == 2 for row in expert_nk)  # two distinct experts
    assert torch.all(gate_nk[:, 0] >= gate_nk[:, 1])


def test_load_balancing_loss() -> None:
    moe = MoE(8, 16, 4, 1, std=0.02, out_std=0.02)
    x_btd = torch.randn(2, 16, 8)
    torch.nn.init.zeros_(moe.router.weight)  # uniform probabilities: aux = 1 (Switch eq. 4)
    moe(x_btd)
    assert moe.aux_loss.item() == pytest.approx(1.0)
    with torch.no_grad():  # every token confidently to expert 0: aux -> E
        moe.router.weight.zero_()
        moe.router.weight[0] = 100.0
    moe(x_btd.abs() + 0.1)
    assert moe.aux_loss.item() == pytest.approx(4.0, rel=1e-3)


def _config(hold: str = "total", experts: int = 4, **model: object) -> TrainerConfig:
    return TrainerConfig(
        seq_len=32,
        model=ModelConfig(head_dim=16, aspect_ratio=16.0, **model),  # type: ignore[arg-type]
        moe=MoEConfig(experts=experts, hold=hold),  # type: ignore[arg-type]
    )


def test_top_k_from_sparsity() -> None:
    assert top_k_for(0.0, 8) == 8 and top_k_for(0.75, 8) == 2 and top_k_for(0.875, 8) == 1
    with pytest.raises(ValueError, match="valid S: 0, 0.25, 0.5, 0.75"):
        top_k_for(0.6, 4)
    with pytest.raises(ValueError, match="sparsity"):
        top_k_for(1.0, 4)


@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("top_k", [1, 3])
def test_counts_equal_the_built_model(tie: bool, top_k: int) -> None:
    config = _config(experts=4, tie_embeddings=tie)
    shape = derive_shape(200_000, config, n_experts=4, top_k=top_k)
    model = GPT(shape, config.model)
    total, non_embedding = count_params(shape, config)
    assert total == sum(p.numel() for p in model.parameters())
    assert total - non_embedding == model.wte.weight.numel()
    experts = sum(p.numel() for n, p in model.named_parameters() if "_edf" in n or "_efd" in n)
    assert count_active_params(shape, config) == total - experts + experts * top_k // 4


def test_hold_total_or_active() -> None:
    target = 300_000
    by_total = [
        plan_moe(RunPoint(n_params=target, tokens=1, sparsity=s), _config()) for s in (0, 0.75)
    ]
    by_active = [
        plan_moe(RunPoint(n_params=target, tokens=1, sparsity=s), _config("active"))
        for s in (0, 0.75)
    ]
    for plan in by_total:
        assert abs(math.log(plan.n_params / target)) < 0.05
    for plan in by_active:
        assert abs(math.log(plan.n_params_active / target)) < 0.05
    assert by_total[1].n_params_active < 0.6 * by_total[1].n_params  # K = 1 of 4 experts
    assert by_active[1].n_params > 1.5 * by_active[0].n_params  # sparser: more in total
    assert by_total[0].n_params_active == by_total[0].n_params  # S = 0: every expert active
    with pytest.raises(ValueError, match="valid S"):
        plan_moe(RunPoint(n_params=target, tokens=1, sparsity=0.3), _config())


def _grouped_mm_flops(a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:  # noqa: ANN001, ANN003
    """FLOPs of ``aten._grouped_mm`` (the flop counter has no formula for it): 2 per
    multiply-add, for the jagged forward (a, k) x (e, k, n) and the weight gradient
    (k, a) x (a, n) -> (e, k, n) alike, each row of the jagged dimension in one group."""
    if len(a_shape) == 2 and len(b_shape) == 3:
        return 2 * a_shape[0] * a_shape[1] * b_shape[2]
    assert len(a_shape) == 2 and len(b_shape) == 2, (a_shape, b_shape)
    return 2 * a_shape[0] * a_shape[1] * b_shape[1]


@pytest.mark.parametrize("dispatch", ["grouped", "split"])
@pytest.mark.parametrize("attention", ["softmax", "sigmoid"])
def test_active_flops_match_counted_matmuls(attention: str, dispatch: str, monkeypatch: pytest.MonkeyPatch) -> None:
    config = replace(_config(experts=4, attention=attention), flop_convention="6N+attn")
    shape = derive_shape(150_000, config, n_experts=4, top_k=2)
    torch.manual_seed(0)
    model = GPT(shape, config.model)
    batch = 2
    idx_bt = torch.randint(0, 256, (batch, config.seq_len))
    used: list[bool] = []

    def spy(x_ad: torch.Tensor, weight_edf: torch.Tensor) -> bool:
        used.append(dispatch == "grouped" and grouped_dispatch(x_ad, weight_edf))
        return used[-1]

    monkeypatch.setattr("trainers.moe.grouped_dispatch", spy)
    mapping = {torch.ops.aten._grouped_mm: _grouped_mm_flops}
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        model(idx_bt).float().sum().backward()
    assert used and all(u == (dispatch == "grouped") for u in used)
    counted = counter.get_total_flops()
    predicted = flops_per_token(shape, config) * batch * config.seq_len
    norm_weights = sum(
        p.numel() for name, p in model.named_parameters() if "ln_" in name or "_norm" in name
    )
    # Exactly K experts' matmuls per token plus the router; only the norms' 6 FLOPs differ.
    assert predicted - counted == 6 * norm_weights * batch * config.seq_len


def test_moe_trainer_learns(tiny_config: ConfigFactory, sink) -> None:
    config = tiny_config(kind="moe", moe=MoEConfig(experts=4))
    steps = 50
    spec = RunSpec(
        run_key="moe",
        study="test",
        seed=0,
        point=RunPoint(
            n_params=40_000, tokens=steps * config.batch_size * config.seq_len, sparsity=0.5
        ),
        trainer=config,
    )
    result = MoETrainer(config).train(spec, sink)
    assert result.plan.shape is not None and result.plan.shape.top_k == 2
    assert result.curve[0].train_loss > result.curve[-1].train_loss + 0.5
    assert result.final_loss < 0.8 * math.log(256)
    assert set(result.eval_losses) == {"code", "prose"}


def test_held_active_counts_hit_the_tolerance_at_small_sizes() -> None:
    # N = 3e4 at E = 4, head_dim 16: in the aspect band the closest counts were 22,736 / 28,896 /
    # 33,184 for S = 0 / 0.5 / 0.75 (up to 28 % off); other depths bring the sparse ones within 5 %
    config = _config("active")
    for sparsity in (0.5, 0.75):
        plan = plan_moe(RunPoint(n_params=30_000, tokens=1, sparsity=sparsity), config)
        assert abs(math.log(plan.n_params_active / 30_000)) <= 0.05
    # no dense-expert model of width 16 or 32 is within 5 % of 3e4: say so, with the nearest
    with pytest.raises(ValueError, match=r"target 30000; the nearest are 22736 \(d_model=16, n_layer=2\) and 32048 \(d_model=16, n_layer=3\)"):
        plan_moe(RunPoint(n_params=30_000, tokens=1, sparsity=0.0), config)


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.75])
def test_a_held_active_count_is_within_tolerance_or_refused(sparsity: float) -> None:
    config = _config("active")
    for i in range(40):
        target = int(1.5e4 * 10 ** (i / 16))  # 1.5e4 .. 4e6
        try:
            plan = plan_moe(RunPoint(n_params=target, tokens=1, sparsity=sparsity), config)
        except ValueError as exc:
            # refused only when the nearest counts on both sides really are out of tolerance
            counts = [int(c) for c in re.findall(r"(\d+) \(d_model", str(exc))]
            assert len(counts) == 2 and counts[0] <= target < counts[1], exc
            assert all(abs(math.log(c / target)) > 0.05 for c in counts)
            continue
        assert abs(math.log(plan.n_params_active / target)) <= 0.05 + 1e-12
        assert plan.n_params_active == count_active_params(plan.shape, config)


def test_holding_the_total_keeps_the_closest_count_fallback() -> None:
    # the total count (and dense shapes) still take the closest count when none is within 5 %,
    # so existing runs keep their shapes (and run keys)
    plan = plan_moe(RunPoint(n_params=30_000, tokens=1, sparsity=0.0), _config("total"))
    assert plan.shape is not None and (plan.shape.d_model, plan.shape.n_layer) == (16, 2)
    assert plan.n_params == 22_736


def test_an_unreachable_active_count_fails_the_study_at_load() -> None:
    from orchestrator.errors import StudyError
    from orchestrator.grid import expand
    from orchestrator.loading import study_from_dict

    study = study_from_dict(
        {
            "name": "held",
            "trainer": {
                "kind": "moe",
                "seq_len": 32,
                "model": {"head_dim": 16, "aspect_ratio": 16},
                "moe": {"experts": 4, "hold": "active"},
            },
            "grid": {"N": [3e4], "D": [1e6], "sparsity": [0.0, 0.5]},
        }
    )
    with pytest.raises(StudyError) as info:
        expand(study)
    assert info.value.key == "grid"
    assert "run N=3e+04" in info.value.message and "nearest are 22736" in info.value.message
