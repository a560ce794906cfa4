"""DFlash's chain: the argmax of each draft depth (a degenerate tree)."""

from __future__ import annotations

from ..tree import DraftTree
from .base import DraftPolicy, PolicyInput, PolicyNeeds

__all__ = ["ChainPolicy"]


class ChainPolicy(DraftPolicy):
    """DFlash: the argmax of each depth, ``min(budget, L)`` deep (a degenerate tree).

    Argmax ties go to the lowest token id (``topk_logprobs``' rule). Built with the DDTree
    selector on K = 1 candidate per depth: the best prefixes of a single chain are its first
    ``budget`` depths, so the arrays (``anc`` included) come from the one tested selector.
    """

    name = "chain"
    needs = PolicyNeeds(chain=True, graph_safe=True)

    def capacity(self, max_depth: int) -> int:
        return min(self.budget, max_depth) + 1

    def select(self, inputs: PolicyInput) -> DraftTree:
        from .. import ops

        logits = inputs.draft_logits
        token, logprob = ops.topk_logprobs(logits, 1)
        depth = min(self.budget, logits.shape[1])
        # contiguous(): a depth slice of a B > 1 batch is strided (a no-op for B = 1).
        return ops.ddtree_select_from_candidates(
            token[:, :depth].contiguous(), logprob[:, :depth].contiguous(), depth, inputs.root_token
        )
