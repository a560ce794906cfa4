"""Selection policies beyond DDTree: CaDDTree (cost-aware budget), PRESTO (prefix prior), TAPS
(reach over a candidate pool) and D²SD (re-anchored second draft), with their cost tables,
n-gram prior, edge scorer and plain-Python references (``*reference``).

Each is a :class:`~difftree_rt.engine.policies.DraftPolicy` subclass here, a core selector in
``cpp/src/cpu``, and a lazy factory in ``engine/policies.py``.
"""

from __future__ import annotations

from .cost import CostTable, default_cost_table, fit_monotone_convex, load_cost_table
from .d2sd import D2SDPolicy
from .ngram import NGramPrior
from .selectors import CaDDTreePolicy, PrestoPolicy, PrestoStream, presto_table_size
from .taps import TapsPolicy

__all__ = [
    "CaDDTreePolicy",
    "CostTable",
    "D2SDPolicy",
    "NGramPrior",
    "PrestoPolicy",
    "PrestoStream",
    "TapsPolicy",
    "default_cost_table",
    "fit_monotone_convex",
    "load_cost_table",
    "presto_table_size",
]
