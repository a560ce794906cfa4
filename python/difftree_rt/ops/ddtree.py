"""DDTree: the exact top-``budget`` prefixes by cumulative draft log-prob (ALGORITHMS.md §2;
cpu/ddtree_select.cpp, cuda/ddtree_select.cu)."""

from __future__ import annotations

from typing import Optional

from torch import Tensor

from .._ext import dl, dl_opt, ext, require_tensor, require_tensors, stream_of
from ..tree import DraftTree
from ._custom import TreeArrays, cuda_workspace, custom_op, empty_tree
from .topk import topk_logprobs


def _ddtree_fake(
    cand_token: Tensor, cand_logprob: Tensor, budget: int, root_token: Optional[Tensor]
) -> TreeArrays:
    return empty_tree(cand_logprob, budget)


@custom_op("ddtree_select", fake=_ddtree_fake)
def _ddtree_select(
    cand_token: Tensor, cand_logprob: Tensor, budget: int, root_token: Optional[Tensor]
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    C = ext()
    inputs = (dl(cand_token), dl(cand_logprob), budget, dl_opt(root_token))
    C.check_ddtree_select(*inputs)
    arrays = empty_tree(cand_logprob, budget)
    workspace = cuda_workspace(
        cand_logprob, lambda: C.ddtree_select_workspace_bytes(*cand_logprob.shape, budget)
    )
    C.ddtree_select(
        *inputs, tuple(dl(a) for a in arrays), stream_of(cand_logprob), dl_opt(workspace)
    )
    return arrays


def ddtree_select_from_candidates(
    cand_token: Tensor, cand_logprob: Tensor, budget: int, root_token: Tensor | None = None
) -> DraftTree:
    """DDTree: the exact top-``budget`` prefixes by cumulative draft log-prob (ALGORITHMS.md §2).

    Args:
        cand_token: ``[B, L, K]`` int32/int64, distinct per depth.
        cand_logprob: float32 ``[B, L, K]``, finite, ``<= 0``, non-increasing along K.
        budget: draft nodes, 1..4096 (the root is extra: capacity ``N = budget + 1``).
        root_token: optional ``[B]`` bonus tokens for node 0 (else -1).

    Returns:
        A :class:`DraftTree` in best-first order. Tie-break: higher score, then smaller depth,
        then earlier parent, then smaller candidate rank.
    """
    require_tensors(
        cand_token=cand_token,
        cand_logprob=cand_logprob,
        root_token=root_token,
        optional=("root_token",),
    )
    arrays = _ddtree_select(cand_token, cand_logprob, int(budget), root_token)
    return DraftTree.from_arrays(arrays, max_depth=int(cand_logprob.shape[1]))


def ddtree_select(draft_logits: Tensor, budget: int, root_token: Tensor | None = None) -> DraftTree:
    """DDTree from the drafter's logits: per-depth top-``min(budget, V)`` candidates, then
    :func:`ddtree_select_from_candidates`.

    Args:
        draft_logits: ``[B, L, V]`` float32/float16/bfloat16 (depth 1..L).
        budget: draft nodes, 1..4096.
        root_token: optional ``[B]`` bonus tokens for node 0.
    """
    require_tensor(draft_logits, "draft_logits")
    V = draft_logits.shape[-1] if draft_logits.dim() > 0 else 1
    # The best `budget` prefixes never use more than `budget` tokens per depth. Clamping keeps an
    # out-of-range budget for the selector to report by name.
    k = max(1, min(int(budget), int(V)))
    token, logprob = topk_logprobs(draft_logits, k)
    return ddtree_select_from_candidates(token, logprob, budget, root_token)
