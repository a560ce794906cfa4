"""Selection policies beyond DDTree: CaDDTree (cost-aware budget) and PRESTO (prefix prior),
with their cost tables, n-gram prior and plain-Python references (``.reference``).

TAPS and D²SD slot in the same way: a :class:`~difftree_rt.engine.policies.DraftPolicy`
subclass here, a core selector in ``cpp/src/cpu``, a lazy factory in ``engine/policies.py``.
"""

from __future__ import annotations

from .cost import CostTable, default_cost_table, fit_monotone_convex, load_cost_table
from .ngram import NGramPrior
from .selectors import CaDDTreePolicy, PrestoPolicy
from .taps import TapsPolicy

__all__ = [
    "CaDDTreePolicy",
    "CostTable",
    "NGramPrior",
    "PrestoPolicy",
    "TapsPolicy",
    "default_cost_table",
    "fit_monotone_convex",
    "load_cost_table",
]
