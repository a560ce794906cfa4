"""Selection policies: the interface (:class:`DraftPolicy`, :class:`PolicyInput`), the name
registry, and every policy — chain, DDTree, CaDDTree (cost-aware budget), PRESTO (prefix
prior), TAPS (reach over a candidate pool) and D²SD (re-anchored second draft) — with their cost
tables, n-gram prior and edge scorer (their plain-Python references: ``difftree_rt.reference``).

Each policy is a :class:`DraftPolicy` subclass here, a core selector in ``cpp/src/cpu``, and a
name in :data:`POLICIES`. The engine imports this package; nothing here imports the engine.
"""

from __future__ import annotations

from .base import MAX_BUDGET, DraftPolicy, PolicyInput, PolicyNeeds
from .caddtree import CaDDTreePolicy
from .chain import ChainPolicy
from .cost import CostTable, default_cost_table, fit_monotone_convex, load_cost_table
from .d2sd import D2SDPolicy
from .ddtree import DDTreePolicy
from .ngram import NGramPrior
from .presto import PrestoPolicy, PrestoStream, presto_table_size
from .registry import POLICIES, make_policy, register_policy
from .taps import TapsPolicy

__all__ = [
    "MAX_BUDGET",
    "POLICIES",
    "CaDDTreePolicy",
    "ChainPolicy",
    "CostTable",
    "D2SDPolicy",
    "DDTreePolicy",
    "DraftPolicy",
    "NGramPrior",
    "PolicyInput",
    "PolicyNeeds",
    "PrestoPolicy",
    "PrestoStream",
    "TapsPolicy",
    "default_cost_table",
    "fit_monotone_convex",
    "load_cost_table",
    "make_policy",
    "presto_table_size",
    "register_policy",
]
