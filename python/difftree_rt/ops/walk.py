"""The acceptance walk (ALGORITHMS.md §3; cpu/tree_walk.cpp, cuda/tree_walk.cu)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Optional

import torch
from torch import Tensor

from .._ext import dl, dl_opt, ext, require_tensor, stream_of
from ..tree import DraftTree
from ._custom import TREE_FIELDS, custom_op


class WalkResult(NamedTuple):
    """Outcome of one acceptance walk.

    path: int32 ``[B, L + 1]`` accepted node indices (``path[:, 0] = 0``), -1 after them.
    accepted: int32 ``[B]`` accepted draft nodes.
    next_token: int32 ``[B]`` the target's token after the path (next bonus), -1 if the
        sequence ended first.
    done: bool ``[B]`` a stop token was emitted or the remaining-token cap reached.
    """

    path: Tensor
    accepted: Tensor
    next_token: Tensor
    done: Tensor


def _walk_outputs(token: Tensor, path_len: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    B = token.shape[0]
    return (
        token.new_empty((B, path_len), dtype=torch.int32),
        token.new_empty((B,), dtype=torch.int32),
        token.new_empty((B,), dtype=torch.int32),
        token.new_empty((B,), dtype=torch.bool),
    )


def _walk_fake(
    token: Tensor, parent: Tensor, depth: Tensor, score: Tensor, first_child: Tensor,
    next_sibling: Tensor, anc: Tensor, num_nodes: Tensor, node_choice: Tensor, path_len: int,
    stop_tokens: Optional[Tensor], remaining: Optional[Tensor],
) -> tuple[Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    return _walk_outputs(token, path_len)


@custom_op("tree_walk", fake=_walk_fake)
def _tree_walk(
    token: Tensor,
    parent: Tensor,
    depth: Tensor,
    score: Tensor,
    first_child: Tensor,
    next_sibling: Tensor,
    anc: Tensor,
    num_nodes: Tensor,
    node_choice: Tensor,
    path_len: int,
    stop_tokens: Optional[Tensor],
    remaining: Optional[Tensor],
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    C = ext()
    tree = tuple(
        dl(a) for a in (token, parent, depth, score, first_child, next_sibling, anc, num_nodes)
    )
    inputs = (tree, dl(node_choice), dl_opt(stop_tokens), dl_opt(remaining))
    C.check_tree_walk(*inputs)
    path, accepted, next_token, done = _walk_outputs(token, path_len)
    C.tree_walk(
        *inputs,
        dl(path),
        dl(accepted),
        dl(next_token),
        dl(done),
        stream_of(token),
    )
    return path, accepted, next_token, done


def tree_walk(
    tree: DraftTree,
    node_choice: Tensor,
    stop_token_ids: Tensor | Sequence[int] | None = None,
    remaining: Tensor | None = None,
) -> WalkResult:
    """Acceptance walk (ALGORITHMS.md §3).

    Args:
        tree: the verified draft tree.
        node_choice: ``[B, N]`` int32/int64, the target's token at every node (greedy argmax or
            an independent sample per node).
        stop_token_ids: tokens that end generation once emitted (``[S]`` tensor or ints).
        remaining: optional ``[B]`` cap on the tokens still to emit this request.

    Returns:
        :class:`WalkResult`. The tokens emitted this round are the path's tokens (nodes
        ``path[:, 1 : accepted + 1]``) followed by ``next_token`` when it is not -1.
    """
    for name, arr in zip(TREE_FIELDS, tree.arrays()):
        require_tensor(arr, f"tree.{name}")
    require_tensor(node_choice, "node_choice")
    stop = stop_token_ids
    if stop is not None and not isinstance(stop, Tensor):
        stop = torch.tensor(list(stop), dtype=torch.int64, device=tree.device)
    if remaining is not None:
        require_tensor(remaining, "remaining")
    # Read N softly: a malformed tree.token is reported by name by the core's validation.
    N = int(tree.token.shape[1]) if isinstance(tree.token, Tensor) and tree.token.dim() == 2 else 1
    path_len = min(tree.max_depth, max(N - 1, 0)) + 1
    out = _tree_walk(*tree.arrays(), node_choice, path_len, stop, remaining)
    return WalkResult(*out)
