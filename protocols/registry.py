"""One registry of protocol parts: each kind is an interface, implementations register by
name, and a protocol suite names one implementation per kind.

Like a protocol kernel table: swapping a suite swaps the table, and the engine asks the
registry, never a hard-coded class.
"""

from __future__ import annotations

import importlib
from typing import Callable, TypeVar

PART_KINDS = ("triple_source", "prg", "truncation", "comparison", "check")

_PARTS: dict[str, dict[str, type]] = {kind: {} for kind in PART_KINDS}
# built-in parts whose modules pull in heavier dependencies: imported when first asked for,
# listed among the choices all the same
_IMPORTED_ON_DEMAND = {("triple_source", "dealer"): "protocols.dealer", ("triple_source", "ot"): "protocols.ot",
                       ("triple_source", "ot_he"): "protocols.ot_he",
                       ("triple_source", "authenticated_dealer"): "protocols.malicious.parts",
                       ("check", "spdz2k_mac"): "protocols.malicious.parts"}
PartClass = TypeVar("PartClass", bound=type)


def register_part(kind: str, name: str) -> Callable[[PartClass], PartClass]:
    """Class decorator: ``@register_part("triple_source", "mine")``."""
    if kind not in _PARTS:
        raise ValueError(f"unknown protocol part kind {kind!r}; kinds are {', '.join(PART_KINDS)}")

    def register(cls: PartClass) -> PartClass:
        existing = _PARTS[kind].get(name)
        if existing is not None and existing is not cls:
            raise ValueError(f"{kind} {name!r} is already registered by {existing.__qualname__}")
        _PARTS[kind][name] = cls
        cls.part_name = name
        return cls

    return register


def part_names(kind: str) -> list[str]:
    """Every part of ``kind`` a config may name: the registered ones and the built-ins not yet imported."""
    return sorted(set(_PARTS[kind]) | {name for (of_kind, name) in _IMPORTED_ON_DEMAND if of_kind == kind})


def part_class(kind: str, name: str) -> type:
    module = _IMPORTED_ON_DEMAND.get((kind, name))
    if module is not None:
        importlib.import_module(module)
    try:
        return _PARTS[kind][name]
    except KeyError:
        raise ValueError(
            f"protocol.{kind}={name!r} is not registered; choose one of {', '.join(part_names(kind))}"
        ) from None
