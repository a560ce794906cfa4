"""The policy interface: draft logits (+ context) -> a :class:`DraftTree` (DESIGN.md §4).

Vocabulary: B batch, L draft depth (block size - 1), K candidates per depth, V vocabulary,
N tree capacity (budget + 1, root included).

Every policy sits behind one interface, :class:`DraftPolicy`: ``select(inputs) -> DraftTree``
with the root (node 0) holding the bonus token. The engine never looks inside a policy; a policy
plugs in by subclassing :class:`DraftPolicy` and registering a name (``registry.py``). This
package sits below the engine: nothing here imports ``difftree_rt.engine``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from ..tree import DraftTree
from ._validate import MAX_BUDGET, check_budget

__all__ = ["MAX_BUDGET", "DraftPolicy", "PolicyInput", "PolicyNeeds"]


@dataclass(frozen=True)
class PolicyNeeds:
    """What a policy needs from the engine: one object per policy instead of scattered flags.

    The engine reads ``policy.needs.<field>``; every field defaults to False (a plain policy:
    any tree shape, no context, one draft, eager only).

    Attributes:
        chain: the trees are always chains (``parent[i] = i - 1``), so verification can use
            plain causal attention (no ancestor mask).
        graph_safe: ``select`` runs entirely in device ops with fixed output shapes, reads no
            host value and ignores ``round_idx``, so graph mode may capture it in a CUDA graph
            (engine/runner.py); other policies run on the eager launcher.
        needs_context: the decoder must fill :attr:`PolicyInput.context_ids`.
        batch_context: a ``needs_context`` policy that also runs on a batch (B > 1) from
            :attr:`PolicyInput.context_lengths` and the -1-padded ``context_ids`` rows (see
            :class:`PolicyInput`). Batched generation refuses ``needs_context`` policies
            without it (NotImplementedError).
        tracks_stream: the policy keeps device state over each request's committed token
            stream (prefix-conditioned priors: presto). The engine calls
            :meth:`DraftPolicy.new_stream` once per call (graph mode: once per batch bucket, so
            the addresses stay fixed), :meth:`DraftPolicy.start_stream` with the prompts and
            then the first token, and :meth:`DraftPolicy.extend_stream` with every round's
            emitted tokens, and passes the state as :attr:`PolicyInput.stream`. Unlike
            ``needs_context`` this costs no host read and no growing tensor, so such a policy
            can be ``graph_safe``.
        redraft: the policy drafts twice per round: the decoder calls
            :meth:`DraftPolicy.redraft_blocks` after the first draft, runs the blocks through
            ``vp_drafter`` (or the decoder's own drafter when None) and hands the logits to
            ``select`` as :attr:`PolicyInput.branch_logits`. Model calls stay in the decoder.
    """

    chain: bool = False
    graph_safe: bool = False
    needs_context: bool = False
    batch_context: bool = False
    tracks_stream: bool = False
    redraft: bool = False


@dataclass
class PolicyInput:
    """Everything a policy may use to build one round's tree.

    Attributes:
        draft_logits: ``[B, L, V]`` drafter logits; row j is depth j + 1.
        root_token: ``[B]`` int64 bonus tokens (node 0 of the tree).
        round_idx: 1-based round counter (int on this eager path).
        context_ids: ``[B, T]`` committed tokens when the policy asks for them
            (``needs.needs_context``), else None. Prefix-conditioned policies (presto) read it.
        branch_logits: ``[B, R, S2 - 1, V]`` the second drafting pass over the blocks the policy
            asked for in :meth:`DraftPolicy.redraft_blocks` (``needs.redraft`` policies: d2sd),
            else None.
        state: scratch a policy may keep between ``redraft_blocks`` and ``select`` of one round.
        context_lengths: batched generation (B > 1) of a ``needs.needs_context`` policy that
            declares ``needs.batch_context``: per request, the committed length (target KV rows =
            the ``context_ids.shape[1] - 1`` of a solo run), host ints; ``context_ids`` is then
            ``[B, T']`` with the ragged streams left-aligned: row b holds request b's prompt and
            generated tokens (the bonus last; ``context_lengths[b] + 1`` tokens while it is
            active) from column 0, then -1. None otherwise.
        committed: ``[B]`` int device tensor of committed lengths (target KV rows: the context
            the round's tree extends) for policies that price a round by its context
            (caddtree), read on the device. The engine fills it on every path (the target
            cache's ``base_len``); None only when a policy is called directly.
        fixed_shape: graph mode: the tree must keep the policy's full capacity (``budget + 1``
            rows, padding past ``num_nodes``) and ``select`` must read no host value.
        stream: ``needs.tracks_stream`` policies: the device state the engine opened with
            :meth:`DraftPolicy.new_stream` and keeps up to date (the committed stream so far,
            ending with this round's root), else None.
        max_nodes: graph mode's tree-size bucket for this round: the tree must have capacity
            ``max_nodes + 1`` (one of :meth:`DraftPolicy.size_buckets`) and at most
            ``max_nodes`` draft nodes; None = the policy's full capacity.
    """

    draft_logits: Tensor
    root_token: Tensor
    round_idx: int = 0
    context_ids: Tensor | None = None
    branch_logits: Tensor | None = None
    state: dict[str, Any] = field(default_factory=dict)
    context_lengths: list[int] | None = None
    committed: Tensor | None = None
    fixed_shape: bool = False
    stream: Any = None
    max_nodes: int | None = None


class DraftPolicy(ABC):
    """Maps a round's draft logits to a draft tree of at most ``budget`` draft nodes.

    Attributes:
        name: registry name.
        budget: draft nodes per round (root excluded), 1..4096.
        needs: the policy's :class:`PolicyNeeds` (what the engine must do for it). A class
            attribute on most policies; a property where it depends on construction (TAPS:
            ``graph_safe`` follows the scorer).
        vp_drafter: the second-pass drafter of ``needs.redraft`` policies (a
            ``DFlashDrafter``), or None for the decoder's drafter.
    """

    name: str = ""
    needs: PolicyNeeds = PolicyNeeds()
    vp_drafter: Any = None

    def __init__(self, budget: int) -> None:
        self.budget = check_budget(budget)

    def capacity(self, max_depth: int) -> int:
        """N, the tree rows this policy produces for draft depth ``max_depth`` (root included)."""
        return self.budget + 1

    def size_buckets(self, max_depth: int) -> list[int]:
        """The tree capacities (N, ascending, the last = :meth:`capacity`) this policy can be
        capped to through :attr:`PolicyInput.max_nodes`. Graph mode captures one round per
        bucket and picks the bucket per round from the tree sizes it saw (one round late), so a
        policy whose tree size varies per round (caddtree) verifies only about the rows it
        uses. Default: the full capacity only."""
        return [self.capacity(max_depth)]

    def new_stream(self, batch_size: int, max_tokens: int, device: Any) -> Any:
        """``needs.tracks_stream`` policies: fresh state for ``batch_size`` streams of at most
        ``max_tokens`` tokens each on ``device``. The state object has ``tensors()``: every
        tensor a round may change (graph mode restores them after its warm-up rounds)."""
        raise NotImplementedError(f"{type(self).__name__} does not track the stream")

    def start_stream(self, stream: Any, tokens: Tensor, lengths: Tensor) -> None:
        """Reset ``stream`` in place to request b's first ``lengths[b]`` tokens of
        ``tokens [B, T]`` (left-aligned; ``lengths`` a ``[B]`` int64 device tensor)."""
        raise NotImplementedError(f"{type(self).__name__} does not track the stream")

    def extend_stream(self, stream: Any, tokens: Tensor, counts: Tensor) -> None:
        """Append ``tokens[b, :counts[b]]`` (``[B, P]``, ``[B]`` on the device) to request b's
        stream, in place, with device ops only (it runs inside graph-mode rounds)."""
        raise NotImplementedError(f"{type(self).__name__} does not track the stream")

    def redraft_blocks(self, inputs: PolicyInput, block_size: int, mask_token_id: int) -> Tensor:
        """``needs.redraft`` policies: the second pass's blocks ``[B, R, block_size]`` (int64)."""
        raise NotImplementedError(f"{type(self).__name__} does not draft twice")

    def redraft_rows(self) -> int:
        """``needs.redraft`` policies: an upper bound on R, the blocks of the second pass
        (graph mode reserves their scratch rows in the drafter cache)."""
        return 0

    @abstractmethod
    def select(self, inputs: PolicyInput) -> DraftTree:
        """Build the round's tree (best-first order, ``parent[i] < i``, root = bonus token)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(budget={self.budget})"
