"""Learning-rate schedules: pure functions with the documented end points and shapes."""

from __future__ import annotations

import math

import pytest

from trainers.config import OptimConfig
from trainers.schedule import cosine_lr, lr_at, wsd_lr


def test_cosine_warms_up_peaks_and_ends_at_the_floor() -> None:
    total = 100
    lrs = [cosine_lr(s, total, lr=1.0, warmup_frac=0.1, min_lr_frac=0.1) for s in range(total)]
    assert lrs[0] == pytest.approx(0.1)
    assert lrs[9] == pytest.approx(1.0)
    assert lrs[:10] == sorted(lrs[:10])
    assert lrs[9:] == sorted(lrs[9:], reverse=True)
    assert lrs[-1] == pytest.approx(0.1)
    # Halfway through the decay (steps 10..100 of 101) the cosine is halfway to the floor.
    assert cosine_lr(55, 101, lr=1.0, warmup_frac=0.1, min_lr_frac=0.1) == pytest.approx(0.55)


def test_wsd_is_flat_then_cools_down_with_one_minus_sqrt() -> None:
    total = 100
    kw = {"lr": 2.0, "warmup_frac": 0.05, "min_lr_frac": 0.0, "cooldown_frac": 0.2}
    lrs = [wsd_lr(s, total, **kw) for s in range(total)]
    assert lrs[4] == pytest.approx(2.0)
    assert all(v == 2.0 for v in lrs[5:80])
    assert lrs[-1] == pytest.approx(0.0)
    for s in range(80, 100):
        assert lrs[s] == pytest.approx(2.0 * (1 - math.sqrt((s - 79) / 20)))


def test_single_step_runs_and_no_warmup() -> None:
    assert cosine_lr(0, 1, lr=1.0, warmup_frac=0.0, min_lr_frac=0.1) == pytest.approx(0.1)
    assert wsd_lr(0, 1, lr=1.0, warmup_frac=0.0, min_lr_frac=0.1, cooldown_frac=0.0) == 1.0


def test_lr_at_dispatches_and_rejects_unknown() -> None:
    assert lr_at(3, 10, OptimConfig(schedule="wsd", lr=0.5, warmup_frac=0.0)) == 0.5
    with pytest.raises(ValueError, match="cosine, wsd"):
        lr_at(0, 10, OptimConfig(schedule="linear"))  # type: ignore[arg-type]
