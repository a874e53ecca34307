"""The FlashSigmoid benchmark script: its FLOP accounting, its plan, and its CPU fallback."""

from __future__ import annotations

import os

import pytest
import torch

from benchmarks import sigmoid_attention as bench


def test_flop_count_follows_the_flashattention_convention() -> None:
    shape = bench.Shape(batch=2, heads=3, seq_len=100, head_dim=64, causal=False)
    assert shape.fwd_flops() == 4 * 2 * 3 * 100**2 * 64
    causal = bench.Shape(batch=2, heads=3, seq_len=100, head_dim=64, causal=True)
    assert causal.fwd_flops() == shape.fwd_flops() / 2
    assert bench.tflops(1e12, 1000.0) == pytest.approx(1.0)


def test_grid_keeps_tokens_and_width_fixed() -> None:
    grid = bench.shapes((1024, 16384), (64, 128), tokens=16384, width=2048)
    assert len(grid) == 8
    assert {s.batch * s.seq_len for s in grid} == {16384}
    assert {s.heads * s.head_dim for s in grid} == {2048}
    assert max(s.seq_len for s in grid) >= 16384


def test_plan_needs_no_gpu(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main(["--plan", "--seq-lens", "4096", "--head-dims", "128"]) == 0
    assert "t=4096 k=128" in capsys.readouterr().out


@pytest.mark.skipif(
    torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") != "1",
    reason="the CPU fallback runs the kernels under Triton's interpreter",
)
def test_correctness_check_under_the_interpreter(capsys: pytest.CaptureFixture[str]) -> None:
    plan = bench.CheckPlan(dtypes=(torch.bfloat16,), head_dims=(32,), lengths=((21, 21),),
                           dq_modes=("atomic",), batch=1, heads=1)
    assert bench.check_correctness("cpu", plan)
    out = capsys.readouterr().out
    assert out.count("| yes |") == 2 and "NO" not in out
