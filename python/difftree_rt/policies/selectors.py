"""Engine policies ``caddtree`` and ``presto`` (DESIGN.md §4) on top of the core's selectors.

Vocabulary: B batch, L draft depth, K candidates per depth,
V vocabulary, N tree capacity (budget + 1).

``caddtree`` stays on the draft logits' device: on CUDA the candidates, the cut and the tree
never leave the GPU (cuda/caddtree_select.cu, bit-identical to the CPU op), and the cost rows are
evaluated on the device from the committed lengths (:class:`~difftree_rt.policies.cost.
DeviceCosts`), so graph mode captures it. ``presto`` runs on the host (no CUDA
kernel yet): the candidates ``[B, L, K]`` are copied to the CPU, the tree is copied back; on a
batch each request has its own n-gram prior and its own selection (one op call per request).
"""

from __future__ import annotations

import os

import torch

from ..engine.policies import DraftPolicy, PolicyInput
from ..tree import DraftTree
from .cost import CostTable, DeviceCosts, load_cost_table
from .ngram import NGramPrior

__all__ = ["CaDDTreePolicy", "PrestoPolicy"]


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
        cost_table: a :class:`CostTable`, a JSON path (``difftree-rt profile-cost``), or None
            for the conservative analytic default.
        batch: the batch size whose costs apply.
        truncate: return the tree cut to ``max(n + 1, min(L, budget) + 1)`` rows, so the eager
            verify pays for the chosen tree, not the capacity (the cut rows are padding
            anyway; the floor keeps the engine's fixed walk-path width). This reads
            ``num_nodes`` on the host (a sync on CUDA): eager only. Graph mode must use
            ``truncate=False`` (full capacity, rows past ``num_nodes`` are padding).

    Attributes:
        sizes: the chosen n of every round since construction (diagnostics; on CUDA logits
            recorded only with ``truncate``, which reads ``num_nodes`` anyway).

    ``graph_safe``: the cost rows come from the committed lengths on the device
    (:attr:`PolicyInput.committed` in graph mode; the eager path's host lengths are uploaded),
    through the same :class:`~difftree_rt.policies.cost.DeviceCosts` arithmetic either way, so
    graph and eager rounds pick the same cut; graph mode never truncates (fixed shapes).
    """

    name = "caddtree"
    needs_context = True  # the committed length selects the context column of the table
    batch_context = True  # on a batch: per-request committed lengths (context_lengths)
    graph_safe = True

    def __init__(
        self,
        budget: int = 256,
        cost_table: CostTable | str | os.PathLike[str] | None = None,
        *,
        batch: int = 1,
        truncate: bool = True,
    ) -> None:
        super().__init__(budget)
        self.table = load_cost_table(cost_table)
        self.batch = batch
        self.truncate = truncate
        self.sizes: list[int] = []
        self._costs: dict[str, DeviceCosts] = {}

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
        # budget is the one a solo run would choose).
        if inputs.committed is not None:
            committed = inputs.committed.to(dev)
        elif inputs.context_lengths is not None:
            committed = torch.tensor([int(c) for c in inputs.context_lengths], device=dev)
        else:
            ctx = 0 if inputs.context_ids is None else max(0, int(inputs.context_ids.shape[1]) - 1)
            committed = torch.full((B,), ctx, dtype=torch.long, device=dev)
        verify, draft = self.costs(dev).at(committed)
        tree = ops.caddtree_select_from_candidates(
            token, logprob, self.budget, verify, draft, inputs.root_token.to(dev)
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


class PrestoPolicy(DraftPolicy):
    """PRESTO (ALGORITHMS.md §7): best-first over ``log q + λ log p_a(t | path)`` (per-parent
    normalised) with an incremental n-gram prior over the prompt and the generated tokens.

    Args:
        budget: draft nodes per round.
        lam: λ (0 gives DDTree exactly).
        order: n of the n-gram prior.
        alpha: additive smoothing mass α (interpolation toward the lower order).
        k: candidates per depth (default ``min(budget, V)``, as DDTree).

    On a batch (``context_lengths`` given, or B > 1) row b of ``context_ids`` is request b's
    stream followed by -1 padding; request b keeps its own prior (:attr:`batch_priors`) and
    gets its own ``presto_select`` call, so its tree is exactly the one of its solo run.
    """

    name = "presto"
    needs_context = True
    batch_context = True  # on a batch: one prior per request, over its own row of context_ids

    def __init__(
        self,
        budget: int = 64,
        *,
        lam: float = 0.2,
        order: int = 3,
        alpha: float = 1.0,
        k: int | None = None,
    ) -> None:
        super().__init__(budget)
        if not lam >= 0.0:
            raise ValueError(f"lam must be >= 0, got {lam!r}")
        if not alpha > 0.0:
            raise ValueError(f"alpha must be > 0, got {alpha!r}")
        self.lam, self.order, self.alpha, self.k = float(lam), order, float(alpha), k
        self.prior = NGramPrior(order)
        #: Batched generation: request b's prior (kept across calls like :attr:`prior`).
        self.batch_priors: list[NGramPrior] = []

    def _select_one(
        self,
        prior: NGramPrior,
        token: torch.Tensor,
        logprob: torch.Tensor,
        root: torch.Tensor,
        vocab: int,
    ) -> DraftTree:
        from .. import ops

        return ops.presto_select_from_candidates(
            token,
            logprob,
            self.budget,
            prior.context()[None],
            prior.keys,
            prior.counts,
            order=self.order,
            vocab=vocab,
            lam=self.lam,
            alpha=self.alpha,
            root_token=root,
        )

    def select(self, inputs: PolicyInput) -> DraftTree:
        logits = inputs.draft_logits
        B, _, V = logits.shape
        if inputs.context_ids is None:
            raise ValueError("presto needs PolicyInput.context_ids (the committed stream)")
        k = max(1, min(self.k or self.budget, self.budget, V))
        token, logprob = _candidates(inputs, k)
        root = inputs.root_token.cpu()
        if B == 1 and inputs.context_lengths is None:
            # The stream ends with the root (bonus) token: it is emitted output, so it is counted.
            self.prior.sync(inputs.context_ids[0])
            return self._select_one(self.prior, token, logprob, root, V).to(logits.device)
        # A batch: row b of context_ids is request b's stream, then -1 padding. Each request
        # keeps its own prior and gets its own selection, so its tree is exactly the solo one
        # (the core's presto_select reads one count table, shared by the whole batch).
        ctx = inputs.context_ids.cpu()
        if ctx.shape[0] != B:
            raise ValueError(f"presto: context_ids has {ctx.shape[0]} rows for B={B}")
        ns = (ctx >= 0).sum(dim=1).tolist()
        while len(self.batch_priors) < B:
            self.batch_priors.append(NGramPrior(self.order))
        trees = []
        for b in range(B):
            prior = self.batch_priors[b]
            prior.sync(ctx[b, : ns[b]])
            sl = slice(b, b + 1)
            trees.append(self._select_one(prior, token[sl], logprob[sl], root[sl], V))
        arrays = tuple(torch.cat(parts) for parts in zip(*(t.arrays() for t in trees)))
        return DraftTree.from_arrays(arrays, trees[0].max_depth).to(logits.device)

    def __repr__(self) -> str:
        return (
            f"PrestoPolicy(budget={self.budget}, lam={self.lam}, order={self.order}, "
            f"alpha={self.alpha})"
        )
