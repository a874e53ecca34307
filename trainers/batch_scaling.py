"""A recipe tuned at one batch size, carried to another: the EMA scaling rule with Adam's.

When the batch size is scaled by kappa = B / B_ref, an optimiser's own scaling rule keeps its
training dynamics (its SDE) unchanged only if every exponential moving average in the procedure
is scaled too: a model EMA of momentum rho becomes rho ** kappa, which keeps its horizon in
samples fixed (Busbridge et al., NeurIPS 2023, "How to scale your EMA"). The optimiser's rule for
Adam is the square-root rule (Malladi et al., NeurIPS 2022, "On the SDEs and scaling rules for
adaptive gradient algorithms"):

    lr -> lr * sqrt(kappa)
    1 - beta_i -> kappa * (1 - beta_i)        (Adam's moment EMAs are EMAs as well)
    eps -> eps / sqrt(kappa)
    rho -> rho ** kappa                       (the model EMA, ``OptimConfig.ema``)

``OptimConfig.reference_batch_size`` is B_ref, the batch size (sequences) the configured lr,
betas, eps and ema were tuned at; ``None`` (the default) scales nothing and keeps every existing
run as it was. ``OptimConfig.ema_batch_size`` is an older, EMA-only reference: without
``reference_batch_size`` only the model EMA follows rho ** (B / ema_batch_size). The weight
decay coefficient is left as configured; torch's AdamW applies it as ``lr * weight_decay`` per
step, so the decay per step follows the scaled lr.

A kappa so large that kappa * (1 - beta_i) exceeds 1 has no valid beta (Adam needs
0 <= beta < 1), and one so small that the scaled beta rounds to 1 freezes Adam's moments: both
raise ``ValueError`` naming ``optim.reference_batch_size``, when the study is loaded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from trainers.config import TrainerConfig


@dataclass(frozen=True, kw_only=True)
class ScaledRecipe:
    """The optimiser settings a run trains with at its own batch size."""

    kappa: float  # B / B_ref for the optimiser (1 without a reference batch size)
    lr: float  # peak learning rate of the schedule
    beta1: float
    beta2: float
    eps: float
    ema: float  # model EMA momentum at this batch size (0 = no EMA)
    ema_kappa: float  # B / B_ref of the model EMA (its reference may be ema_batch_size)

    def metrics(self) -> dict[str, float]:
        """The values as run metrics (``recipe/<name>``), recorded with a run's results."""
        values = {
            "kappa": self.kappa,
            "lr": self.lr,
            "beta1": self.beta1,
            "beta2": self.beta2,
            "eps": self.eps,
        }
        if self.ema > 0:
            values["ema"] = self.ema
        return {f"recipe/{name}": value for name, value in values.items()}


def _scaled_beta(name: str, beta: float, kappa: float, config: TrainerConfig) -> float:
    """1 - beta -> kappa * (1 - beta), which must leave beta in [0, 1)."""
    scaled = 1.0 - kappa * (1.0 - beta)
    if not 0.0 <= scaled < 1.0:
        raise ValueError(
            f"optim.reference_batch_size: batch_size {config.batch_size} is kappa = {kappa:g} times "
            f"the reference {config.optim.reference_batch_size}, and the scaling rule "
            f"1 - {name} -> kappa * (1 - {name}) takes {name} = {beta} to {scaled:g}, outside "
            f"[0, 1); bring batch_size closer to the reference batch size"
        )
    return scaled


def scaled_recipe(config: TrainerConfig) -> ScaledRecipe:
    """lr, betas, eps and the model EMA momentum at ``config.batch_size`` (module docstring)."""
    optim = config.optim
    reference = optim.reference_batch_size
    if reference is not None and reference < 1:
        raise ValueError(
            f"optim.reference_batch_size: must be a positive number of sequences (or null), "
            f"got {reference}"
        )
    if reference is not None and optim.ema_batch_size and optim.ema_batch_size != reference:
        raise ValueError(
            f"optim.ema_batch_size: {optim.ema_batch_size} differs from "
            f"optim.reference_batch_size {reference}; with a reference batch size the EMA follows "
            "it, so leave ema_batch_size at 0"
        )
    batch = config.batch_size
    ema_reference = optim.ema_batch_size or reference or batch
    ema_kappa = batch / ema_reference
    ema = optim.ema**ema_kappa
    if reference is None:
        return ScaledRecipe(
            kappa=1.0,
            lr=optim.lr,
            beta1=optim.beta1,
            beta2=optim.beta2,
            eps=optim.eps,
            ema=ema,
            ema_kappa=ema_kappa,
        )
    kappa = batch / reference
    root = math.sqrt(kappa)
    return ScaledRecipe(
        kappa=kappa,
        lr=optim.lr * root,
        beta1=_scaled_beta("beta1", optim.beta1, kappa, config),
        beta2=_scaled_beta("beta2", optim.beta2, kappa, config),
        eps=optim.eps / root,
        ema=ema,
        ema_kappa=ema_kappa,
    )


def at_batch_size(config: TrainerConfig) -> TrainerConfig:
    """``config`` with its recipe resolved at its own batch size: the scaled lr, betas, eps and
    EMA momentum written in, and both references cleared, so that everything downstream (the
    optimiser, the schedule, the model EMA) reads the values the run trains with."""
    recipe = scaled_recipe(config)
    optim = replace(
        config.optim,
        lr=recipe.lr,
        beta1=recipe.beta1,
        beta2=recipe.beta2,
        eps=recipe.eps,
        ema=recipe.ema,
        ema_batch_size=0,
        reference_batch_size=None,
    )
    return replace(config, optim=optim)
