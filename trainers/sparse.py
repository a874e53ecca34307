"""The mixture-of-experts trainer (kind ``moe``): the dense GPT with routed-expert MLPs.

A run's sparsity S = (E - K) / E (``RunPoint.sparsity``; Abnar et al. 2025) and the configured
number of experts E (``MoEConfig.experts``) fix the top-k K = (1 - S) * E, which must be a whole
number from 1 to E. The target N is the total parameter count, or the active one when
``MoEConfig.hold`` is ``"active"``, so a study can compare sparsities at a fixed total size or at
a fixed compute per token. The plan records the exact total, non-embedding and active counts;
FLOPs count the active parameters (``trainers.flops``). The training objective is the
cross-entropy plus ``aux_loss_coef`` times the load-balancing loss (``trainers.moe``); held-out
losses are pure cross-entropy, as for dense runs.
"""

from __future__ import annotations

import torch

from trainers.base import RunPlan, RunPoint, RunSpec
from trainers.config import TrainerConfig
from trainers.data import domains_of, mixture_weights
from trainers.dense import DenseTrainer, LossFn, plan_for_shape, unwrap
from trainers.model import GPT, lm_loss
from trainers.shapes import count_active_params, derive_shape


def top_k_for(sparsity: float, experts: int) -> int:
    """K = (1 - S) * E, which must be a whole number in [1, E]; else ``ValueError``."""
    if experts < 1:
        raise ValueError(f"moe.experts: must be >= 1, got {experts}")
    k = (1.0 - sparsity) * experts
    if not 0.0 <= sparsity < 1.0 or abs(k - round(k)) > 1e-6:
        valid = ", ".join(f"{(experts - j) / experts:g}" for j in range(experts, 0, -1))
        raise ValueError(
            f"sparsity: S={sparsity} gives top_k = (1 - S) * E = {k:g} with E={experts} experts, "
            f"not a whole number of experts; valid S: {valid}"
        )
    return round(k)


def plan_moe(point: RunPoint, config: TrainerConfig) -> RunPlan:
    """Shape, exact total/non-embedding/active counts, whole steps and active FLOPs."""
    if point.tokens < 1:
        raise ValueError(f"tokens: must be a positive integer, got {point.tokens}")
    mixture_weights(point.mixture, len(domains_of(config.data)))
    experts = config.moe.experts
    top_k = top_k_for(point.sparsity, experts)
    shape = derive_shape(point.n_params, config, n_experts=experts, top_k=top_k)
    return plan_for_shape(shape, point, config, n_active=count_active_params(shape, config))


class MoETrainer(DenseTrainer):
    """Trains the GPT with top-k routed experts (kind ``moe``); see the module docstring."""

    kind = "moe"

    def plan_run(self, point: RunPoint, config: TrainerConfig) -> RunPlan:
        """Exact size and cost; see ``plan_moe``."""
        return plan_moe(point, config)

    def make_loss(self, spec: RunSpec, device: torch.device) -> LossFn:
        """Cross-entropy plus the weighted load-balancing loss."""
        coef = spec.trainer.moe.aux_loss_coef

        def loss(
            model: torch.nn.Module, inputs_bt: torch.Tensor, targets_bt: torch.Tensor
        ) -> torch.Tensor:
            logits_btv = model(inputs_bt)  # through the data-parallel wrapper, if any
            inner = unwrap(model)
            assert isinstance(inner, GPT)
            return lm_loss(logits_btv, targets_bt) + coef * inner.aux_loss()

        return loss
