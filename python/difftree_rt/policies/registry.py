"""Policy names: ``SpeculativeDecoder(policy=name)`` builds ``POLICIES[name](budget)``.

Kept apart from ``base.py`` because it needs every policy class and every policy needs the
base; here all of them are imported directly, no factory defers an import.
"""

from __future__ import annotations

from collections.abc import Callable

from .auto import AutoPolicy
from .base import DraftPolicy
from .caddtree import CaDDTreePolicy
from .chain import ChainPolicy
from .d2sd import D2SDPolicy
from .ddtree import DDTreePolicy
from .presto import PrestoPolicy
from .taps import TapsPolicy

__all__ = ["POLICIES", "make_policy", "register_policy"]

POLICIES: dict[str, Callable[[int], DraftPolicy]] = {
    "chain": ChainPolicy,
    "ddtree": DDTreePolicy,
    "caddtree": CaDDTreePolicy,
    "presto": PrestoPolicy,
    "taps": TapsPolicy,
    "d2sd": D2SDPolicy,
    "auto": AutoPolicy,
}


def register_policy(name: str, factory: Callable[[int], DraftPolicy]) -> None:
    """Make ``factory(budget)`` available as ``SpeculativeDecoder(policy=name)``."""
    if name == "ar" or name in POLICIES:
        raise ValueError(f"policy name {name!r} is already taken")
    POLICIES[name] = factory


def make_policy(name: str, budget: int) -> DraftPolicy:
    """The registered policy ``name`` with ``budget`` draft nodes (``TypeError`` /
    ``ValueError`` naming the argument for a non-str name, an unknown name or a bad budget)."""
    if not isinstance(name, str):
        raise TypeError(f"policy must be a str name or a DraftPolicy, got {type(name).__name__}")
    factory = POLICIES.get(name)
    if factory is None:
        known = ", ".join(sorted(["ar", *POLICIES]))
        raise ValueError(f"policy must be one of {known} or a DraftPolicy, got {name!r}")
    return factory(budget)
