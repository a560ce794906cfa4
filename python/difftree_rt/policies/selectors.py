"""Engine policies ``caddtree`` and ``presto`` (DESIGN.md §4) on top of the core's selectors.

Vocabulary: B batch, L draft depth, K candidates per depth,
V vocabulary, N tree capacity (budget + 1).

``caddtree`` stays on the draft logits' device: on CUDA the candidates, the cut and the tree
never leave the GPU (cuda/caddtree_select.cu, bit-identical to the CPU op), and the cost rows are
evaluated on the device from the committed lengths (:class:`~difftree_rt.policies.cost.
DeviceCosts`), so graph mode captures it. ``presto`` likewise: each request's n-gram table
lives on the device (:class:`PrestoStream`, extended every round by ``ngram_extend`` with the
emitted tokens) and ``presto_select`` reads it there (cuda/presto.cu), so no round copies
anything to the host and graph mode captures it too.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from ..tree import DraftTree
from ._validate import check_bool, check_float, check_int
from .base import DraftPolicy, PolicyInput
from .cost import CostTable, DeviceCosts, load_cost_table

__all__ = ["CaDDTreePolicy", "PrestoPolicy", "PrestoStream", "presto_table_size"]


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

    ``graph_safe``: the cost rows come from the committed lengths on the device
    (:attr:`PolicyInput.committed`, the target cache's lengths, on every engine path),
    through the same :class:`~difftree_rt.policies.cost.DeviceCosts` arithmetic either way, so
    graph and eager rounds pick the same cut; graph mode never truncates (fixed shapes) but
    verifies each round in one of :meth:`size_buckets` (the cut then stops at that bucket's
    cap: ``PolicyInput.max_nodes``).
    """

    name = "caddtree"
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


def presto_table_size(order: int, max_tokens: int) -> int:
    """H, the slots of one request's n-gram table for a stream of up to ``max_tokens`` tokens:
    each token adds at most ``2 * order`` keys, and a load of at most 1/2 keeps probing short
    and the table never full."""
    need = 4 * order * max(1, int(max_tokens))
    return max(16, 1 << (need - 1).bit_length())


@dataclass
class PrestoStream:
    """The device state of :class:`PrestoPolicy` for a batch of B streams (fixed addresses, so
    graph mode captures them): the n-gram tables and each stream's last ``order - 1`` tokens.

    Attributes:
        keys, counts: int64 / int32 ``[B, H]`` count tables (``ops.ngram_extend``).
        history: int64 ``[B, order - 1]``: each stream's last tokens (the root last), -1 padded.
        overflow: int32 ``[B]``: set on CUDA if a table ever filled (sized so it cannot).
    """

    keys: torch.Tensor
    counts: torch.Tensor
    history: torch.Tensor
    overflow: torch.Tensor

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor a round changes (graph mode saves them around capture warm-up)."""
        return [self.keys, self.counts, self.history, self.overflow]


class PrestoPolicy(DraftPolicy):
    """PRESTO (ALGORITHMS.md §7): best-first over ``log q + λ log p_a(t | path)`` (per-parent
    normalised) with an incremental n-gram prior over the prompt and the generated tokens.

    Args:
        budget: draft nodes per round.
        lam: λ, finite and >= 0 (0 gives DDTree exactly).
        order: n of the n-gram prior, in [1, 8].
        alpha: additive smoothing mass α, finite and > 0 (interpolation toward the lower order).
        k: candidates per depth, >= 1 (capped at ``min(budget, V)``; None: that cap, as
            DDTree).

    The prior is per request and on the draft logits' device: the engine opens a
    :class:`PrestoStream` per call (:meth:`start_stream` counts the prompts and the first
    token) and extends it with each round's emitted tokens (:meth:`extend_stream`), so a
    request in a batch gets exactly its solo tree, and a round reads no host value
    (``graph_safe``).
    """

    name = "presto"
    tracks_stream = True
    graph_safe = True

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
        self.lam = check_float("lam", lam, lo=0.0)
        self.alpha = check_float("alpha", alpha, lo=0.0, lo_open=True)
        self.order = check_int("order", order, 1, 8)
        self.k = None if k is None else check_int("k", k, 1)

    # ---- the stream (engine hooks, see DraftPolicy) ------------------------------------------
    def new_stream(
        self, batch_size: int, max_tokens: int, device: torch.device | str
    ) -> PrestoStream:
        size = presto_table_size(self.order, max_tokens)
        return PrestoStream(
            keys=torch.zeros(batch_size, size, dtype=torch.int64, device=device),
            counts=torch.zeros(batch_size, size, dtype=torch.int32, device=device),
            history=torch.full((batch_size, self.order - 1), -1, dtype=torch.int64, device=device),
            overflow=torch.zeros(batch_size, dtype=torch.int32, device=device),
        )

    def start_stream(
        self, stream: PrestoStream, tokens: torch.Tensor, lengths: torch.Tensor
    ) -> None:
        from .. import ops

        stream.keys.zero_()
        stream.counts.zero_()
        stream.history.fill_(-1)
        stream.overflow.zero_()
        ops.ngram_extend(
            stream.keys, stream.counts, stream.history, tokens, lengths, self.order,
            stream.overflow,
        )  # fmt: skip

    def extend_stream(
        self, stream: PrestoStream, tokens: torch.Tensor, counts: torch.Tensor
    ) -> None:
        from .. import ops

        ops.ngram_extend(
            stream.keys, stream.counts, stream.history, tokens, counts, self.order,
            stream.overflow,
        )  # fmt: skip

    # ---- selection --------------------------------------------------------------------------
    def select(self, inputs: PolicyInput) -> DraftTree:
        from .. import ops

        stream = inputs.stream
        if not isinstance(stream, PrestoStream):
            raise ValueError(
                "presto needs PolicyInput.stream (its PrestoStream: new_stream + start_stream, "
                "extended with every round's emitted tokens)"
            )
        logits = inputs.draft_logits
        B, _, V = logits.shape
        if stream.keys.shape[0] != B or stream.keys.device != logits.device:
            raise ValueError(
                f"presto: the stream holds {stream.keys.shape[0]} tables on "
                f"{stream.keys.device}, the draft logits are [B={B}, ...] on {logits.device}"
            )
        k = max(1, min(self.k or self.budget, self.budget, V))
        token, logprob = _candidates(inputs, k, on_device=True)
        return ops.presto_select_from_candidates(
            token, logprob, self.budget, stream.history, stream.keys, stream.counts,
            order=self.order, vocab=V, lam=self.lam, alpha=self.alpha,
            root_token=inputs.root_token,
        )  # fmt: skip

    def __repr__(self) -> str:
        return (
            f"PrestoPolicy(budget={self.budget}, lam={self.lam}, order={self.order}, "
            f"alpha={self.alpha})"
        )
