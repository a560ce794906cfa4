"""Checks for policy options: a wrong type raises ``TypeError``, a value out of range
``ValueError``, both naming the option, at construction (never first at ``generate``).

No import of the extension: options are checked before anything is compiled or loaded.
"""

from __future__ import annotations

import math
import numbers
import os
from typing import Any

from ..tree import MAX_BUDGET

__all__ = ["MAX_BUDGET", "check_bool", "check_budget", "check_float", "check_int", "check_path"]


def check_int(name: str, value: Any, lo: int, hi: int | None = None) -> int:
    """``value`` as an int in ``[lo, hi]`` (``hi=None``: no upper bound).

    Integral numbers only: a bool, a float (even 2.0) or a string is a ``TypeError``, never
    rounded or parsed."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    value = int(value)
    if value < lo or (hi is not None and value > hi):
        bounds = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ValueError(f"{name} must be an int {bounds}, got {value}")
    return value


def check_budget(value: Any, name: str = "budget") -> int:
    """A tree budget: draft nodes per round, an int in ``[1, MAX_BUDGET]``."""
    return check_int(name, value, 1, MAX_BUDGET)


def check_float(name: str, value: Any, *, lo: float | None = None, lo_open: bool = False) -> float:
    """``value`` as a finite float, ``>= lo`` (``> lo`` with ``lo_open``) when ``lo`` is set.

    Real numbers only (ints included, bools and strings not)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if lo is not None and (value <= lo if lo_open else value < lo):
        raise ValueError(f"{name} must be {'>' if lo_open else '>='} {lo}, got {value}")
    return value


def check_bool(name: str, value: Any) -> bool:
    """``value`` if it is a bool (a truthy string such as ``"no"`` is a ``TypeError``)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")
    return value


def check_path(name: str, value: Any) -> str:
    """``value`` (a str or ``os.PathLike``) naming an existing regular file, as a str.

    An int is rejected before any ``open``: ``open(0)`` would read stdin, ``open(5)`` a file
    descriptor."""
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{name} must be a path (str or os.PathLike), got {type(value).__name__}")
    path = os.fspath(value)
    if not isinstance(path, str):
        raise TypeError(f"{name} must be a str path, got {type(path).__name__} {path!r}")
    if not os.path.isfile(path):
        what = "is not a file" if os.path.exists(path) else "does not exist"
        raise ValueError(f"{name}: {path!r} {what}")
    return path
