"""Engine policy ``caddtree`` (DESIGN.md §4): the DDTree order, cut where the estimated
throughput peaks, on top of the core's selector.

Vocabulary: B batch, L draft depth, K candidates per depth,
V vocabulary, N tree capacity (budget + 1).

It stays on the draft logits' device: on CUDA the candidates, the cut and the tree never leave
the GPU (cuda/caddtree_select.cu, bit-identical to the CPU op), and the cost rows are evaluated
on the device from the committed lengths (:class:`~difftree_rt.policies.cost.DeviceCosts`), so
graph mode captures it.
"""

from __future__ import annotations

import os

import torch

from ..tree import DraftTree
from ._validate import check_bool, check_int
from .base import DraftPolicy, PolicyInput, PolicyNeeds
from .cost import CostTable, DeviceCosts, load_cost_table

__all__ = ["CaDDTreePolicy"]


def _candidates(
    inputs: PolicyInput, k: int, *, on_device: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    from .. import ops

    token, logprob = ops.topk_logprobs(inputs.draft_logits, k)
    if on_device:
        return token, logprob
    return token.cpu(), logprob.cpu()


class CaDDTreePolicy(DraftPolicy):
    """CaDDTree (ALGORITHMS.md §5): the DDTree order, cut per round where the estimated
    throughput ``(1 + Φ(n)) / (C_d + C_v(n; ctx))`` peaks.

    Args:
        budget: the maximum tree (draft nodes).
        cost_table: a :class:`CostTable`, its parsed JSON (a dict), the path of a JSON file
            (``difftree-rt profile-cost``), or None for the conservative analytic default.
        batch: the batch size whose costs apply, >= 1.
        truncate: return the tree cut to ``max(n + 1, min(L, budget) + 1)`` rows, so the eager
            verify pays for the chosen tree, not the capacity (the cut rows are padding
            anyway; the floor keeps the engine's fixed walk-path width). This reads
            ``num_nodes`` on the host (a sync on CUDA): eager only. Graph mode must use
            ``truncate=False`` (full capacity, rows past ``num_nodes`` are padding).

    Attributes:
        sizes: the chosen n of every round since construction (diagnostics; on CUDA logits
            recorded only with ``truncate``, which reads ``num_nodes`` anyway).

    ``needs.graph_safe``: the cost rows come from the committed lengths on the device
    (:attr:`PolicyInput.committed`, the target cache's lengths, on every engine path),
    through the same :class:`~difftree_rt.policies.cost.DeviceCosts` arithmetic either way, so
    graph and eager rounds pick the same cut; graph mode never truncates (fixed shapes) but
    verifies each round in one of :meth:`size_buckets` (the cut then stops at that bucket's
    cap: ``PolicyInput.max_nodes``).
    """

    name = "caddtree"
    needs = PolicyNeeds(graph_safe=True)

    def __init__(
        self,
        budget: int = 256,
        cost_table: CostTable | str | os.PathLike[str] | None = None,
        *,
        batch: int = 1,
        truncate: bool = True,
    ) -> None:
        super().__init__(budget)
        self.batch = check_int("batch", batch, 1)
        self.truncate = check_bool("truncate", truncate)
        self.table = load_cost_table(cost_table, name="cost_table")
        self.sizes: list[int] = []
        self._costs: dict[str, DeviceCosts] = {}

    def size_buckets(self, max_depth: int) -> list[int]:
        """Graph mode's tree sizes (N): caps of ``min(L, budget)`` draft nodes (the walk's
        path width), doubling while below two thirds of the budget, then the budget."""
        floor = max(1, min(max_depth, self.budget))
        caps = [floor]
        c = 2 * floor
        while 3 * c < 2 * self.budget:
            caps.append(c)
            c *= 2
        if caps[-1] != self.budget:
            caps.append(self.budget)
        return [c + 1 for c in caps]

    def costs(self, device: torch.device) -> DeviceCosts:
        """The table's rows at (budget, batch) on ``device`` (built once per device)."""
        key = str(device)
        found = self._costs.get(key)
        if found is None:
            found = self.table.device_costs(self.budget, self.batch, device)
            self._costs[key] = found
        return found

    def select(self, inputs: PolicyInput) -> DraftTree:
        from .. import ops

        logits = inputs.draft_logits
        B, L, V = logits.shape
        dev = logits.device if logits.is_cuda else torch.device("cpu")
        token, logprob = _candidates(inputs, max(1, min(self.budget, V)), on_device=logits.is_cuda)
        # Each request's committed length picks its cost row (on a batch too, so its per-round
        # budget is the one a solo run would choose). Direct calls may pass the stream instead.
        if inputs.committed is not None:
            committed = inputs.committed.to(dev)
        elif inputs.context_lengths is not None:
            committed = torch.tensor([int(c) for c in inputs.context_lengths], device=dev)
        else:
            ctx = 0 if inputs.context_ids is None else max(0, int(inputs.context_ids.shape[1]) - 1)
            committed = torch.full((B,), ctx, dtype=torch.long, device=dev)
        verify, draft = self.costs(dev).at(committed)
        # A tree-size bucket (graph mode) caps the cut: the tree at a smaller maximum is the
        # same best-first prefix and the same θ scan, stopped at the cap.
        cap = self.budget if inputs.max_nodes is None else int(inputs.max_nodes)
        if not 1 <= cap <= self.budget:
            raise ValueError(f"max_nodes must be in [1, budget={self.budget}], got {cap}")
        if cap < self.budget:
            verify = verify[:, : cap + 1].contiguous()
        tree = ops.caddtree_select_from_candidates(
            token, logprob, cap, verify, draft, inputs.root_token.to(dev)
        )
        if inputs.fixed_shape:
            return tree.to(logits.device)
        if self.truncate or not logits.is_cuda:
            n = int(tree.num_nodes.max())
            self.sizes.append(n - 1)
            if self.truncate:
                tree = tree.truncate(min(tree.capacity, max(n, min(L, self.budget) + 1)))
        return tree.to(logits.device)

    def __repr__(self) -> str:
        return f"CaDDTreePolicy(budget={self.budget}, unit={self.table.unit!r})"
