"""D²SD: rejection boundaries and the joint tree of a draft and its re-drafted branches
(ALGORITHMS.md §8; cpu/d2sd.cpp, cuda/d2sd.cu)."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .._ext import dl, dl_opt, ext, require_tensor, require_tensors, stream_of
from ..tree import DraftTree
from ._custom import TreeArrays, cuda_workspace, custom_op, empty_tree


def _boundaries_fake(trunk_logprob: Tensor, k: int) -> Tensor:
    return trunk_logprob.new_empty((trunk_logprob.shape[0], k), dtype=torch.int32)


@custom_op("d2sd_boundaries", fake=_boundaries_fake)
def _d2sd_boundaries(trunk_logprob: Tensor, k: int) -> Tensor:
    C = ext()
    boundary = torch.empty(
        (trunk_logprob.shape[0], k), dtype=torch.int32, device=trunk_logprob.device
    )
    C.check_d2sd_boundaries(dl(trunk_logprob), dl(boundary))
    C.d2sd_boundaries(dl(trunk_logprob), dl(boundary), stream_of(trunk_logprob))
    return boundary


def d2sd_boundaries(trunk_logprob: Tensor, k: int = 4) -> Tensor:
    """D²SD's top-``k`` rejection boundaries (ALGORITHMS.md §8; cpu/d2sd.cpp, CUDA tensors run
    cuda/d2sd.cu: the same double arithmetic with CUDA's exp/log, log-probs trusted).

    Args:
        trunk_logprob: float32 ``[B, L]``, ``log c_j``: the first draft's top-1 log-prob at depth
            j + 1 (``topk_logprobs(draft_logits, 1)[1][..., 0]``), finite and <= 0.
        k: boundaries per request, 1..L.

    Returns:
        int32 ``[B, k]``: the numbers of accepted drafts i (0..L-1) with the highest
        ``r(i) = (Π_{j<=i} c_j)(1 - c_{i+1})``, best first, ties to the smaller i; bit-identical
        to ``difftree_rt.reference.d2sd.d2sd_boundaries``.
    """
    require_tensor(trunk_logprob, "trunk_logprob")
    if not isinstance(k, int) or isinstance(k, bool):
        raise ValueError(f"k must be an int, got {k!r}")
    return _d2sd_boundaries(trunk_logprob, k)


def _select_fake(
    trunk_token: Tensor, trunk_logprob: Tensor, boundary: Tensor, branch_token: Tensor,
    branch_logprob: Tensor, budget: int, root_token: Optional[Tensor],
) -> TreeArrays:  # fmt: skip
    return empty_tree(trunk_logprob, budget)


@custom_op("d2sd_select", fake=_select_fake)
def _d2sd_select(
    trunk_token: Tensor,
    trunk_logprob: Tensor,
    boundary: Tensor,
    branch_token: Tensor,
    branch_logprob: Tensor,
    budget: int,
    root_token: Optional[Tensor],
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    C = ext()
    inputs = (
        dl(trunk_token),
        dl(trunk_logprob),
        dl(boundary),
        dl(branch_token),
        dl(branch_logprob),
        budget,
        dl_opt(root_token),
    )
    C.check_d2sd_select(*inputs)
    arrays = empty_tree(trunk_logprob, budget)
    B, L1 = trunk_logprob.shape
    K, L2 = branch_logprob.shape[1], branch_logprob.shape[2]
    workspace = cuda_workspace(  # large tries
        trunk_logprob, lambda: C.d2sd_select_workspace_bytes(B, L1, K, L2, budget)
    )
    C.d2sd_select(
        *inputs, tuple(dl(a) for a in arrays), stream_of(trunk_logprob), dl_opt(workspace)
    )
    return arrays


def d2sd_select(
    trunk_token: Tensor,
    trunk_logprob: Tensor,
    boundary: Tensor,
    branch_token: Tensor,
    branch_logprob: Tensor,
    budget: int,
    root_token: Tensor | None = None,
) -> DraftTree:
    """D²SD's joint tree: the first draft and its re-drafted branches as one trie (cpu/d2sd.cpp;
    CUDA tensors run cuda/d2sd.cu, bit-identical, the inputs trusted rather than validated).

    Args:
        trunk_token, trunk_logprob: ``[B, L1]`` the first draft (top-1 token and log-prob per
            depth).
        boundary: ``[B, K]`` visible-prefix length of each branch (``d2sd_boundaries``), -1 for
            an unused row.
        branch_token, branch_logprob: ``[B, K, L2]`` the re-drafts: entry j is depth j + 1
            (entries before the branch's boundary are ignored).
        budget: draft nodes, 1..4096.
        root_token: optional ``[B]`` bonus tokens.

    Returns:
        A :class:`DraftTree` (capacity ``budget + 1``, depth up to ``max(L1, L2)``, score = sum
        of edge scores), bit-identical to ``difftree_rt.reference.d2sd.d2sd_select``.
    """
    require_tensors(
        trunk_token=trunk_token,
        trunk_logprob=trunk_logprob,
        boundary=boundary,
        branch_token=branch_token,
        branch_logprob=branch_logprob,
        root_token=root_token,
        optional=("root_token",),
    )
    arrays = _d2sd_select(
        trunk_token, trunk_logprob, boundary, branch_token, branch_logprob, int(budget),
        root_token,
    )  # fmt: skip
    depth = max(int(trunk_logprob.shape[-1]), int(branch_logprob.shape[-1]))
    return DraftTree.from_arrays(arrays, max_depth=depth)
