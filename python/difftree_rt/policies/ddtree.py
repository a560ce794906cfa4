"""DDTree: the exact top-``budget`` prefixes by product of draft marginals."""

from __future__ import annotations

from ..tree import DraftTree
from .base import DraftPolicy, PolicyInput, PolicyNeeds

__all__ = ["DDTreePolicy"]


class DDTreePolicy(DraftPolicy):
    """DDTree (ALGORITHMS.md §2): exact top-``budget`` prefixes by product of draft marginals."""

    name = "ddtree"
    needs = PolicyNeeds(graph_safe=True)

    def select(self, inputs: PolicyInput) -> DraftTree:
        from .. import ops

        return ops.ddtree_select(inputs.draft_logits, self.budget, inputs.root_token)
