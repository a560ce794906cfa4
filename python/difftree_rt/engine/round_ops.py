"""Steps every speculative round shares — the eager solo loop, the eager batch loop and graph
mode — kept in one place because graph == eager relies on them being the same ops.

Vocabulary: B batch, N tree capacity, P path columns (``min(L, N - 1) + 1``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..models.target import TargetAdapter, TargetOutput
from ..policies import DraftPolicy
from ..tree import DraftTree

__all__ = ["emitted_tokens", "start_stream", "verify_tree", "write_emitted"]


def verify_tree(adapter: TargetAdapter, tree: DraftTree, is_chain: bool) -> TargetOutput:
    """The target's verify pass over ``tree`` (chains need no ancestor mask). Padding rows hold
    token -1: any valid id works there (never visible, never accepted); 0 keeps the embedding
    lookup in range."""
    tokens = tree.token.clamp(min=0)
    if is_chain:
        return adapter.verify(tokens, tree.depth, None, None)
    return adapter.verify(tokens, tree.depth, tree.anc, tree.num_nodes)


def emitted_tokens(
    tree: DraftTree, path: Tensor, accepted: Tensor, next_token: Tensor, cols: Tensor
) -> tuple[Tensor, Tensor]:
    """A round's emitted tokens: the accepted path's draft tokens, then the next bonus (when
    not -1) at column ``accepted``.

    Args:
        tree: the verified tree. path: ``[B, P]`` walk path. accepted, next_token: ``[B]``
            int64. cols: ``arange(P)``.

    Returns:
        (emit int64 ``[B, P]``, entries past the count are don't-care; count int64 ``[B]``).
    """
    path_nodes = path[:, 1:].clamp(min=0).to(torch.long)
    emit = torch.gather(tree.token, 1, path_nodes).to(torch.long)
    emit = torch.cat([emit, next_token[:, None]], dim=1)[:, : cols.numel()]
    emit = torch.where(cols[None] == accepted[:, None], next_token[:, None], emit)
    return emit, accepted + (next_token >= 0).to(torch.long)


def write_emitted(
    out: Tensor, generated: Tensor, emit: Tensor, num_emit: Tensor, cols: Tensor, trash: int
) -> tuple[Tensor, Tensor]:
    """Scatter the first ``num_emit`` of ``emit`` into ``out`` after each request's
    ``generated`` tokens; the rest go to the scratch column ``trash`` (no host-side length).

    Returns:
        (keep bool ``[B, P]``: the real entries, dest int64 ``[B, P]``: the columns written).
    """
    keep = cols[None] < num_emit[:, None]
    dest = torch.where(keep, generated[:, None] + cols[None], trash)
    out.scatter_(1, dest, emit)
    return keep, dest


def start_stream(
    policy: DraftPolicy, stream: Any, prompts: Tensor, lengths: Tensor, first: Tensor
) -> None:
    """Open a ``needs.tracks_stream`` policy's state on a request's stream before its first round:
    the prompts (``[B, T]`` left-aligned, ``lengths [B]``), then the first generated token
    ``[B]`` (the first round's root). Later rounds append their emitted tokens."""
    policy.start_stream(stream, prompts, lengths)
    ones = torch.ones(first.shape[0], dtype=torch.long, device=first.device)
    policy.extend_stream(stream, first.to(torch.long)[:, None].clamp(min=0), ones)
