"""TAPS: the top-``budget`` pool nodes by reach (ALGORITHMS.md §6; cpu/taps.cpp,
cuda/taps_select.cu)."""

from __future__ import annotations

from torch import Tensor

from .._ext import dl, dl_opt, ext, require_tensors, stream_of
from ..tree import DraftTree
from ._custom import TreeArrays, cuda_workspace, custom_op, empty_tree


def _taps_fake(
    pool_token: Tensor, pool_parent: Tensor, pool_size: Tensor, log_qc: Tensor, budget: int
) -> TreeArrays:
    return empty_tree(log_qc, budget)


@custom_op("taps_select", fake=_taps_fake)
def _taps_select(
    pool_token: Tensor, pool_parent: Tensor, pool_size: Tensor, log_qc: Tensor, budget: int
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    C = ext()
    inputs = (dl(pool_token), dl(pool_parent), dl(pool_size), dl(log_qc), budget)
    C.check_taps_select(*inputs)
    arrays = empty_tree(log_qc, budget)
    workspace = cuda_workspace(  # large pools
        log_qc, lambda: C.taps_select_workspace_bytes(*log_qc.shape, budget)
    )
    C.taps_select(*inputs, tuple(dl(a) for a in arrays), stream_of(log_qc), dl_opt(workspace))
    return arrays


def taps_select(
    pool_token: Tensor,
    pool_parent: Tensor,
    pool_size: Tensor,
    log_qc: Tensor,
    budget: int,
    *,
    max_depth: int,
) -> DraftTree:
    """TAPS (ALGORITHMS.md §6): the top-``budget`` pool nodes by reach (cpu/taps.cpp; CUDA
    tensors run cuda/taps_select.cu, bit-identical, the pool trusted rather than validated).

    Args:
        pool_token, pool_parent: ``[B, P1]`` the candidate pool as a tree (row 0 the root,
            ``parent[i] < i``; ``difftree_rt.policies.taps.taps_pool``).
        pool_size: ``[B]`` valid pool rows (root included).
        log_qc: ``[B, P1]`` float32 ``log q_cond(node | parent)`` (<= 0; row 0 ignored).
        budget: draft nodes, 1..4096.
        max_depth: L, the tree's maximum depth.

    Returns:
        A :class:`DraftTree` (capacity ``budget + 1``, score = log reach), bit-identical to
        ``difftree_rt.reference.taps.taps_select``.
    """
    require_tensors(
        pool_token=pool_token, pool_parent=pool_parent, pool_size=pool_size, log_qc=log_qc
    )
    arrays = _taps_select(pool_token, pool_parent, pool_size, log_qc, int(budget))
    return DraftTree.from_arrays(arrays, max_depth=int(max_depth))
