"""Registry entries of the law families beyond Chinchilla (each family lives in its own module)."""

from __future__ import annotations

from collections.abc import Callable

from laws.base import ScalingLaw

FACTORIES: dict[str, Callable[..., ScalingLaw]] = {}
