"""Registry entries of the law families beyond Chinchilla (each family lives in its own module)."""

from __future__ import annotations

from collections.abc import Callable

from laws.base import ScalingLaw
from laws.distillation import Distillation
from laws.forgetting import Forgetting, ForgettingFinetune
from laws.mixture import MixtureAdditive, MixtureJoint
from laws.sparsity import Sparsity

FACTORIES: dict[str, Callable[..., ScalingLaw]] = {
    "distillation": Distillation,
    "sparsity": Sparsity,
    "mixture_additive": MixtureAdditive,
    "mixture_joint": MixtureJoint,
    "forgetting": Forgetting,
    "forgetting_ft": ForgettingFinetune,
}
