"""Reference of ``difftree_rt.ops.tree_walk``: the accepted path of a verified draft tree.

Vocabulary: B batch, N tree capacity, P path length (max depth + 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from ..tree import DraftTree

__all__ = ["WalkResult", "tree_walk"]


class WalkResult(NamedTuple):
    """What ``tree_walk`` returns: the fields of ``difftree_rt.ops.WalkResult``, in its order
    (the oracle never imports the compiled ops; tests/test_reference_layering.py checks they
    agree).

    Attributes:
        path: ``[B, P]`` int32 node indices of the accepted path (``path[:, 0] == 0``), -1 past it.
        accepted: ``[B]`` int32 accepted draft nodes.
        next_token: ``[B]`` int32 the bonus token, -1 when the walk was cut.
        done: ``[B]`` bool, stopped at a stop token or at ``remaining``.
    """

    path: Tensor
    accepted: Tensor
    next_token: Tensor
    done: Tensor


def tree_walk(
    tree: DraftTree,
    node_choice: Tensor,
    stop_token_ids: Sequence[int] | Tensor | None = None,
    remaining: Tensor | None = None,
) -> WalkResult:
    """Reference of :func:`difftree_rt.ops.tree_walk`: walk, then cut at stop tokens / the cap."""
    stops = set() if stop_token_ids is None else {int(s) for s in stop_token_ids}
    B, N = tree.token.shape
    P = min(tree.max_depth, N - 1) + 1
    path = torch.full((B, P), -1, dtype=torch.int32)
    accepted = torch.zeros(B, dtype=torch.int32)
    next_token = torch.full((B,), -1, dtype=torch.int32)
    done = torch.zeros(B, dtype=torch.bool)
    for b in range(B):
        n = int(tree.num_nodes[b])
        children: dict[int, dict[int, int]] = {}
        for i in range(1, n):
            children.setdefault(int(tree.parent[b, i]), {})[int(tree.token[b, i])] = i
        nodes = [0]
        while int(node_choice[b, nodes[-1]]) in children.get(nodes[-1], {}):
            nodes.append(children[nodes[-1]][int(node_choice[b, nodes[-1]])])
        emitted = [int(tree.token[b, i]) for i in nodes[1:]] + [int(node_choice[b, nodes[-1]])]
        cap = None if remaining is None else int(remaining[b])
        keep = len(emitted) if cap is None else min(len(emitted), cap)
        stopped = False
        for j, tok in enumerate(emitted[:keep]):
            if tok in stops:
                keep, stopped = j + 1, True
                break
        acc = min(keep, len(nodes) - 1)
        path[b, : acc + 1] = torch.tensor(nodes[: acc + 1], dtype=torch.int32)
        accepted[b] = acc
        next_token[b] = emitted[-1] if keep == len(emitted) else -1
        done[b] = stopped or (cap is not None and keep == cap)
    return WalkResult(path, accepted, next_token, done)
