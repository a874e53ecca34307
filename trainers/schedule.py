"""Learning-rate schedules as pure functions of the step (as in facebookresearch/lingua).

Steps are 0-based optimiser steps ``0 .. total_steps - 1``. Both schedules start with a linear
warmup over ``round(warmup_frac * total_steps)`` steps that reaches the peak on the last warmup
step (step 0 already trains at ``lr / warmup_steps``, so no step is wasted at lr = 0), and both
end at exactly ``min_lr_frac * lr`` on the last step.
"""

from __future__ import annotations

import math

from trainers.config import OptimConfig

SCHEDULES: tuple[str, ...] = ("cosine", "wsd")


def _warmup_steps(total_steps: int, warmup_frac: float, warmup_steps: int = 0) -> int:
    if warmup_steps > 0:  # an absolute warmup (cooldown branches share their trunk's)
        return min(total_steps, warmup_steps)
    return min(total_steps, max(0, round(warmup_frac * total_steps)))


def cooldown_steps(total_steps: int, optim: OptimConfig) -> int:
    """Steps of a WSD run's final cooldown (``optim.cooldown_frac`` of the run, after warmup)."""
    warmup = _warmup_steps(total_steps, optim.warmup_frac, optim.warmup_steps)
    return min(total_steps - warmup, max(0, round(optim.cooldown_frac * total_steps)))


def cosine_lr(
    step: int,
    total_steps: int,
    *,
    lr: float,
    warmup_frac: float,
    min_lr_frac: float,
    warmup_steps: int = 0,
) -> float:
    """Linear warmup, then half a cosine from ``lr`` down to ``min_lr_frac * lr``.

    The cosine decay to a floor of 10 % of the peak is the Chinchilla recipe (Hoffmann et al.
    2022, section 3 and appendix B), decaying over exactly the run's length.
    """
    warmup = _warmup_steps(total_steps, warmup_frac, warmup_steps)
    if step < warmup:
        return lr * (step + 1) / warmup
    decay_steps = total_steps - warmup - 1
    progress = 1.0 if decay_steps <= 0 else min(1.0, (step - warmup) / decay_steps)
    floor = min_lr_frac * lr
    return floor + (lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def wsd_lr(
    step: int,
    total_steps: int,
    *,
    lr: float,
    warmup_frac: float,
    min_lr_frac: float,
    cooldown_frac: float,
    warmup_steps: int = 0,
) -> float:
    """Warmup-stable-decay: warmup, constant ``lr``, then a (1 - sqrt) cooldown.

    The cooldown covers the last ``round(cooldown_frac * total_steps)`` steps and follows
    ``lr * (1 - sqrt(progress))`` (Hägele et al. 2024, "Scaling laws and compute-optimal training
    beyond fixed training durations", section 3, the shape that did best there), rescaled to end
    at ``min_lr_frac * lr`` instead of 0.
    """
    warmup = _warmup_steps(total_steps, warmup_frac, warmup_steps)
    cooldown = min(total_steps - warmup, max(0, round(cooldown_frac * total_steps)))
    if step < warmup:
        return lr * (step + 1) / warmup
    cooldown_start = total_steps - cooldown
    if step < cooldown_start:
        return lr
    progress = min(1.0, (step - cooldown_start + 1) / cooldown)
    floor = min_lr_frac * lr
    return floor + (lr - floor) * (1.0 - math.sqrt(progress))


def lr_at(step: int, total_steps: int, optim: OptimConfig) -> float:
    """The learning rate of ``step`` under ``optim.schedule``."""
    if optim.schedule == "cosine":
        return cosine_lr(
            step,
            total_steps,
            lr=optim.lr,
            warmup_frac=optim.warmup_frac,
            min_lr_frac=optim.min_lr_frac,
            warmup_steps=optim.warmup_steps,
        )
    if optim.schedule == "wsd":
        return wsd_lr(
            step,
            total_steps,
            lr=optim.lr,
            warmup_frac=optim.warmup_frac,
            min_lr_frac=optim.min_lr_frac,
            cooldown_frac=optim.cooldown_frac,
            warmup_steps=optim.warmup_steps,
        )
    raise ValueError(
        f"optim.schedule: unknown schedule {optim.schedule!r}; valid schedules: {', '.join(SCHEDULES)}"
    )
