"""CaDDTree: the DDTree tree cut where the estimated throughput stops improving
(ALGORITHMS.md §5; cpu/caddtree.cpp, cuda/caddtree_select.cu)."""

from __future__ import annotations

from typing import Optional

from torch import Tensor

from .._ext import dl, dl_opt, ext, require_tensors, stream_of
from ..tree import DraftTree
from ._custom import TreeArrays, cuda_workspace, custom_op, empty_tree


def _caddtree_fake(
    cand_token: Tensor, cand_logprob: Tensor, max_budget: int, root_token: Optional[Tensor],
    verify_cost: Tensor, draft_cost: Tensor,
) -> TreeArrays:  # fmt: skip
    return empty_tree(cand_logprob, max_budget)


@custom_op("caddtree_select", fake=_caddtree_fake)
def _caddtree_select(
    cand_token: Tensor,
    cand_logprob: Tensor,
    max_budget: int,
    root_token: Optional[Tensor],
    verify_cost: Tensor,
    draft_cost: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    C = ext()
    inputs = (
        dl(cand_token),
        dl(cand_logprob),
        max_budget,
        dl_opt(root_token),
        dl(verify_cost),
        dl(draft_cost),
    )
    C.check_caddtree_select(*inputs)
    arrays = empty_tree(cand_logprob, max_budget)
    workspace = cuda_workspace(  # the CUDA ddtree_select's scratch
        cand_logprob, lambda: C.ddtree_select_workspace_bytes(*cand_logprob.shape, max_budget)
    )
    C.caddtree_select(
        *inputs, tuple(dl(a) for a in arrays), stream_of(cand_logprob), dl_opt(workspace)
    )
    return arrays


def caddtree_select_from_candidates(
    cand_token: Tensor,
    cand_logprob: Tensor,
    max_budget: int,
    verify_cost: Tensor,
    draft_cost: Tensor,
    root_token: Tensor | None = None,
) -> DraftTree:
    """CaDDTree (ALGORITHMS.md §5): the DDTree tree at ``max_budget`` cut where the estimated
    throughput ``θ(n) = (1 + Φ(n)) / (C_d + C_v(n))`` stops improving.

    Args:
        cand_token, cand_logprob: ``[B, L, K]`` candidates as for
            :func:`ddtree_select_from_candidates` (CPU or CUDA: on CUDA the costs are trusted,
            not validated, since that would need a host sync).
        max_budget: the largest tree (draft nodes, 1..4096).
        verify_cost: float32 ``[B, max_budget + 1]``: ``C_v(n)``, cost of verifying ``1 + n``
            tokens at each request's context (see ``difftree_rt.policies.CostTable``).
        draft_cost: float32 ``[B]``: ``C_d``.
        root_token: optional ``[B]`` bonus tokens.

    Returns:
        A :class:`DraftTree` of capacity ``max_budget + 1`` with ``num_nodes = 1 + n*``; rows
        past it are padding. Bit-identical to
        ``difftree_rt.reference.policies.caddtree_select_from_candidates``.
    """
    require_tensors(
        cand_token=cand_token,
        cand_logprob=cand_logprob,
        verify_cost=verify_cost,
        draft_cost=draft_cost,
        root_token=root_token,
        optional=("root_token",),
    )
    arrays = _caddtree_select(
        cand_token, cand_logprob, int(max_budget), root_token, verify_cost, draft_cost
    )
    return DraftTree.from_arrays(arrays, max_depth=int(cand_logprob.shape[1]))
