"""The draft tree (DESIGN.md §2): one representation for every selector, kernel and policy."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

__all__ = ["MAX_BUDGET", "DraftTree", "anc_words"]

#: The core's limit on draft nodes per tree (capacity N = budget + 1).
MAX_BUDGET = 4096


def anc_words(capacity: int) -> int:
    """Number of 32-bit words per ``anc`` row for a tree of ``capacity`` nodes."""
    return (capacity + 31) // 32


@dataclass(frozen=True)
class DraftTree:
    """A batch of draft trees with fixed capacity ``N = budget + 1``, batch first.

    Node 0 is the root (the previous round's bonus token). Nodes are in best-first order and
    ``parent[i] < i``, so every prefix ``[0, n)`` is itself a valid tree. Rows ``>= num_nodes``
    are padding: ``token = parent = first_child = next_sibling = -1``, ``depth = 0``,
    ``score = -inf`` and ``anc`` holds only the row's own bit.

    Attributes:
        token: int32 ``[B, N]`` token id per node (root = bonus token, -1 when not given).
        parent: int32 ``[B, N]``, -1 for the root.
        depth: int32 ``[B, N]``, 0 for the root; node i sits at position ``base_len + depth[i]``.
        score: float32 ``[B, N]`` the selector's ranking score (DDTree: cumulative log-prob).
        first_child: int32 ``[B, N]``, -1 for none.
        next_sibling: int32 ``[B, N]``, -1 for none; siblings in best-first order.
        anc: int32 ``[B, N, ceil(N / 32)]`` holding u32 bits: bit j of row i is set iff j is i or
            an ancestor of i.
        num_nodes: int32 ``[B]`` valid nodes per request (root included).
        max_depth: L, the deepest depth the selector could use; walk paths have ``L + 1`` columns.
    """

    token: Tensor
    parent: Tensor
    depth: Tensor
    score: Tensor
    first_child: Tensor
    next_sibling: Tensor
    anc: Tensor
    num_nodes: Tensor
    max_depth: int

    @property
    def batch_size(self) -> int:
        return int(self.token.shape[0])

    @property
    def capacity(self) -> int:
        """N, the number of node rows (budget + 1)."""
        return int(self.token.shape[1])

    @property
    def device(self) -> torch.device:
        return self.token.device

    def arrays(self) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        """The eight arrays in the order the C++ core takes them."""
        return (
            self.token,
            self.parent,
            self.depth,
            self.score,
            self.first_child,
            self.next_sibling,
            self.anc,
            self.num_nodes,
        )

    @classmethod
    def from_arrays(cls, arrays: tuple[Tensor, ...], max_depth: int) -> DraftTree:
        return cls(*arrays, max_depth=max_depth)  # type: ignore[misc]

    def to(self, device: torch.device | str) -> DraftTree:
        return DraftTree.from_arrays(tuple(a.to(device) for a in self.arrays()), self.max_depth)

    def is_chain(self) -> Tensor:
        """bool ``[B]``: the valid nodes form a chain (``parent[i] == i - 1``), so attention can
        use plain causal masking. Computed on the tree's device without a host sync."""
        n = self.capacity
        idx = torch.arange(n, device=self.device, dtype=torch.int32)
        valid = idx[None, :] < self.num_nodes[:, None]
        chain_link = (self.parent == idx[None, :] - 1) | (idx[None, :] == 0)
        return (chain_link | ~valid).all(dim=1)

    def truncate(self, num_nodes: int) -> DraftTree:
        """The best-first prefix ``[0, num_nodes)`` as a tree of capacity ``num_nodes``."""
        if not 1 <= num_nodes <= self.capacity:
            raise ValueError(f"num_nodes: expected 1..{self.capacity}, got {num_nodes}")
        n = num_nodes
        cut = slice(0, n)

        def clip_link(link: Tensor) -> Tensor:
            # Children and later siblings have larger indices, so links past the cut just end.
            return torch.where(link >= n, torch.full_like(link, -1), link)

        return replace(
            self,
            token=self.token[:, cut].contiguous(),
            parent=self.parent[:, cut].contiguous(),
            depth=self.depth[:, cut].contiguous(),
            score=self.score[:, cut].contiguous(),
            first_child=clip_link(self.first_child[:, cut]).contiguous(),
            next_sibling=clip_link(self.next_sibling[:, cut]).contiguous(),
            anc=self.anc[:, cut, : anc_words(n)].contiguous(),
            num_nodes=torch.clamp(self.num_nodes, max=n),
        )
