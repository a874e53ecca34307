"""Names -> law families. Unknown names raise with the list of valid ones."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from laws.base import ScalingLaw
from laws.chinchilla import Chinchilla, ChinchillaGamma

_FACTORIES: dict[str, Callable[..., ScalingLaw]] = {
    "chinchilla": Chinchilla,
    "chinchilla_gamma": ChinchillaGamma,
}


def _register_optional() -> None:
    # families in their own modules; imported here so that registry order is stable
    from laws import families

    _FACTORIES.update(families.FACTORIES)


_register_optional()

#: names accepted by :func:`get_law`
LAW_NAMES: tuple[str, ...] = tuple(_FACTORIES)


def get_law(name: str, **options: Any) -> ScalingLaw:
    """The built-in law family ``name`` (options, e.g. ``k`` for mixture laws, go to its
    constructor). Raises ValueError listing the valid names."""
    if name == "custom":
        raise ValueError("custom laws are built from a spec: use laws.custom_law(spec)")
    if name not in _FACTORIES:
        raise ValueError(f"unknown law {name!r}; valid laws: {', '.join(LAW_NAMES)}")
    return _FACTORIES[name](**options)


def law_from_spec(spec: Mapping[str, Any]) -> ScalingLaw:
    """Rebuild a law from :meth:`ScalingLaw.spec` (built-in name plus options, or a custom law)."""
    spec = dict(spec)
    name = spec.pop("name")
    if spec.get("expression") is not None:
        from laws.custom import custom_law

        return custom_law({"name": name, **spec})
    return get_law(name, **spec)
