"""``policy="auto"``: a tree policy at several sizes, and the target alone, chosen per round.

Vocabulary: B batch, N tree size (root included), V vocabulary.

The policy itself only builds trees: :meth:`AutoPolicy.select` runs its tree policy at the size
bucket the engine asks for (``PolicyInput.max_nodes``), and :meth:`AutoPolicy.predicted`
turns a full-size tree's node scores into each bucket's expected accepted length under the
draft-marginal surrogate. Whether to draft at all and which bucket to verify is the engine's
decision (``difftree_rt.engine.auto``), from measured round times and observed acceptance
(DESIGN.md §8).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..tree import DraftTree
from .base import DraftPolicy, PolicyInput, PolicyNeeds

__all__ = ["AutoPolicy"]

#: Draft-node budgets of the default buckets (N = budget + 1), capped at the policy's budget.
DEFAULT_BUDGETS = (4, 8, 16, 32, 64)


class AutoPolicy(DraftPolicy):
    """Per round: no draft, or the tree policy ``tree`` at one of its size buckets.

    Args:
        budget: the largest tree's draft nodes (the capacity is ``budget + 1``).
        tree: the tree policy's registered name (``"presto"``, the default: DDTree's tree with
            the context's n-gram prior, the best fixed setting on the shipped pair; ``"ddtree"``,
            ...) or a factory ``budget -> DraftPolicy``. The predicted acceptance assumes the policy ranks its
            nodes by cumulative draft log-probability in ``DraftTree.score`` (DDTree and its
            relatives); others are calibrated from the observed acceptance alone.
        budgets: draft-node budgets of the smaller buckets (each < ``budget``).
    """

    name = "auto"

    def __init__(
        self,
        budget: int = 64,
        tree: str | Callable[[int], DraftPolicy] = "presto",
        budgets: tuple[int, ...] = DEFAULT_BUDGETS,
    ) -> None:
        super().__init__(budget)
        if isinstance(tree, str):
            from .registry import make_policy

            if tree in ("auto", "ar"):
                raise ValueError(f"AutoPolicy(tree=...) must be a tree policy, got {tree!r}")
            self.tree_name = tree

            def factory(b: int) -> DraftPolicy:
                return make_policy(tree, b)
        elif callable(tree):
            factory = tree
            self.tree_name = getattr(tree, "name", None) or getattr(tree, "__name__", "custom")
        else:
            raise TypeError(f"tree must be a policy name or a factory, got {type(tree).__name__}")
        if not all(isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in budgets):
            raise ValueError(f"budgets must be positive ints, got {budgets!r}")
        sizes = sorted({b for b in budgets if b < self.budget} | {self.budget})
        self.policies: dict[int, DraftPolicy] = {b + 1: factory(b) for b in sizes}
        self.largest = self.policies[self.budget + 1]
        if self.largest.needs.redraft or self.largest.needs.chain:
            raise ValueError(
                f"AutoPolicy(tree={self.tree_name!r}): the tree policy must draft once and "
                "build trees (not chains or two-pass policies)"
            )

    @property
    def needs(self) -> PolicyNeeds:  # type: ignore[override]
        # The choice is a host decision per round (one round late in graph mode, where each
        # bucket is its own captured graph): graph-safe when the tree policy is.
        n = self.largest.needs
        return PolicyNeeds(
            graph_safe=n.graph_safe,
            needs_context=n.needs_context,
            batch_context=n.batch_context,
            tracks_stream=n.tracks_stream,
        )

    def size_buckets(self, max_depth: int) -> list[int]:
        return sorted(self.policies)

    def new_stream(self, batch_size: int, max_tokens: int, device: Any) -> Any:
        return self.largest.new_stream(batch_size, max_tokens, device)

    def start_stream(self, stream: Any, tokens: Tensor, lengths: Tensor) -> None:
        self.largest.start_stream(stream, tokens, lengths)

    def extend_stream(self, stream: Any, tokens: Tensor, counts: Tensor) -> None:
        self.largest.extend_stream(stream, tokens, counts)

    def select(self, inputs: PolicyInput) -> DraftTree:
        """The tree policy's tree at bucket ``inputs.max_nodes + 1`` (None: the largest)."""
        nodes = self.budget + 1 if inputs.max_nodes is None else inputs.max_nodes + 1
        policy = self.policies.get(nodes)
        if policy is None:
            raise ValueError(
                f"max_nodes={inputs.max_nodes}: not one of the buckets {sorted(self.policies)}"
            )
        return policy.select(inputs)

    def predicted(self, tree: DraftTree) -> list[float]:
        """Per bucket (ascending N), the surrogate's expected accepted draft tokens of its tree,
        averaged over the batch: the sum of the best ``N - 1`` draft nodes' path probabilities
        ``exp(score)`` of a largest-bucket tree (one host read of ``[B, N]`` scores)."""
        score = tree.score[:, 1:].float()
        prob = torch.where(torch.isfinite(score), score.exp(), torch.zeros_like(score))
        ranked = prob.sort(dim=1, descending=True).values.cumsum(dim=1).mean(dim=0).tolist()
        return [ranked[min(n - 1, len(ranked)) - 1] for n in sorted(self.policies)]

    def __repr__(self) -> str:
        return f"AutoPolicy(budget={self.budget}, tree={self.tree_name!r})"
