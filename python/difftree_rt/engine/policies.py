"""Selection policies: draft logits (+ context) -> a :class:`DraftTree` (DESIGN.md §4).

Vocabulary: B batch, L draft depth (block size - 1), K candidates per depth, V vocabulary,
N tree capacity (budget + 1, root included).

Every policy sits behind one interface, :class:`DraftPolicy`: ``select(inputs) -> DraftTree``
with the root (node 0) holding the bonus token. The decoder never looks inside a policy; later
policies (caddtree, taps, presto, d2sd) plug in by subclassing and registering a name.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from ..tree import DraftTree

__all__ = [
    "MAX_BUDGET",
    "POLICIES",
    "ChainPolicy",
    "DDTreePolicy",
    "DraftPolicy",
    "PolicyInput",
    "make_policy",
    "register_policy",
]

#: The core's budget limit (``difftree_rt.ops.MAX_BUDGET``), repeated here so validation does
#: not need the compiled extension.
MAX_BUDGET = 4096


@dataclass
class PolicyInput:
    """Everything a policy may use to build one round's tree.

    Attributes:
        draft_logits: ``[B, L, V]`` drafter logits; row j is depth j + 1.
        root_token: ``[B]`` int64 bonus tokens (node 0 of the tree).
        round_idx: 1-based round counter (int on this eager path).
        context_ids: ``[B, T]`` committed tokens when the policy asks for them
            (``needs_context``), else None. Prefix-conditioned policies (presto) read it.
        branch_logits: ``[B, R, S2 - 1, V]`` the second drafting pass over the blocks the policy
            asked for in :meth:`DraftPolicy.redraft_blocks` (``redraft`` policies: d2sd), else
            None.
        state: scratch a policy may keep between ``redraft_blocks`` and ``select`` of one round.
        context_lengths: batched generation (B > 1) of a ``needs_context`` policy that declares
            ``batch_context``: per request, the committed length (target KV rows = the
            ``context_ids.shape[1] - 1`` of a solo run), host ints; ``context_ids`` is then
            ``[B, T']`` with the ragged streams left-aligned: row b holds request b's prompt and
            generated tokens (the bonus last; ``context_lengths[b] + 1`` tokens while it is
            active) from column 0, then -1. None otherwise.
        committed: ``[B]`` int device tensor of committed lengths (target KV rows: the context
            the round's tree extends) for policies that price a round by its context
            (caddtree), read on the device. The engine fills it on every path (the target
            cache's ``base_len``); None only when a policy is called directly.
        fixed_shape: graph mode: the tree must keep the policy's full capacity (``budget + 1``
            rows, padding past ``num_nodes``) and ``select`` must read no host value.
        stream: ``tracks_stream`` policies: the device state the engine opened with
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
        is_chain: the trees are always chains (``parent[i] = i - 1``), so verification can
            use plain causal attention (no ancestor mask).
        needs_context: the decoder must fill :attr:`PolicyInput.context_ids`.
        redraft: the policy drafts twice per round: the decoder calls :meth:`redraft_blocks`
            after the first draft, runs the blocks through ``vp_drafter`` (or the decoder's own
            drafter when None) and hands the logits to ``select`` as
            :attr:`PolicyInput.branch_logits`. Model calls stay in the decoder.
        vp_drafter: the second-pass drafter of ``redraft`` policies (a ``DFlashDrafter``), or
            None for the decoder's drafter.
        graph_safe: ``select`` runs entirely in device ops with fixed output shapes, reads no
            host value and ignores ``round_idx``, so graph mode may capture it in a CUDA graph
            (engine/graph.py); other policies run on the eager path.
        batch_context: a ``needs_context`` policy that also runs on a batch (B > 1) from
            :attr:`PolicyInput.context_lengths` and the -1-padded ``context_ids`` rows (see
            :class:`PolicyInput`). Batched generation refuses ``needs_context`` policies
            without it (NotImplementedError).
        tracks_stream: the policy keeps device state over each request's committed token
            stream (prefix-conditioned priors: presto). The engine calls :meth:`new_stream`
            once per call (graph mode: once per batch bucket, so the addresses stay fixed),
            :meth:`start_stream` with the prompts and then the first token, and
            :meth:`extend_stream` with every round's emitted tokens, and passes the state as
            :attr:`PolicyInput.stream`. Unlike ``needs_context`` this costs no host read and
            no growing tensor, so such a policy can be ``graph_safe``.
    """

    name: str = ""
    is_chain: bool = False
    needs_context: bool = False
    batch_context: bool = False
    redraft: bool = False
    vp_drafter: Any = None
    graph_safe: bool = False
    tracks_stream: bool = False

    def __init__(self, budget: int) -> None:
        # Imported here: difftree_rt.policies imports this module (its policies subclass ours).
        from ..policies._validate import check_budget

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
        """``tracks_stream`` policies: fresh state for ``batch_size`` streams of at most
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
        """``redraft`` policies: the second pass's blocks ``[B, R, block_size]`` (int64)."""
        raise NotImplementedError(f"{type(self).__name__} does not draft twice")

    def redraft_rows(self) -> int:
        """``redraft`` policies: an upper bound on R, the blocks of the second pass (graph mode
        reserves their scratch rows in the drafter cache)."""
        return 0

    @abstractmethod
    def select(self, inputs: PolicyInput) -> DraftTree:
        """Build the round's tree (best-first order, ``parent[i] < i``, root = bonus token)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(budget={self.budget})"


class ChainPolicy(DraftPolicy):
    """DFlash: the argmax of each depth, ``min(budget, L)`` deep (a degenerate tree).

    Argmax ties go to the lowest token id (``topk_logprobs``' rule). Built with the DDTree
    selector on K = 1 candidate per depth: the best prefixes of a single chain are its first
    ``budget`` depths, so the arrays (``anc`` included) come from the one tested selector.
    """

    name = "chain"
    is_chain = True
    graph_safe = True

    def capacity(self, max_depth: int) -> int:
        return min(self.budget, max_depth) + 1

    def select(self, inputs: PolicyInput) -> DraftTree:
        from .. import ops

        logits = inputs.draft_logits
        token, logprob = ops.topk_logprobs(logits, 1)
        depth = min(self.budget, logits.shape[1])
        # contiguous(): a depth slice of a B > 1 batch is strided (a no-op for B = 1).
        return ops.ddtree_select_from_candidates(
            token[:, :depth].contiguous(), logprob[:, :depth].contiguous(), depth, inputs.root_token
        )


class DDTreePolicy(DraftPolicy):
    """DDTree (ALGORITHMS.md §2): exact top-``budget`` prefixes by product of draft marginals."""

    name = "ddtree"
    graph_safe = True

    def select(self, inputs: PolicyInput) -> DraftTree:
        from .. import ops

        return ops.ddtree_select(inputs.draft_logits, self.budget, inputs.root_token)


POLICIES: dict[str, Callable[[int], DraftPolicy]] = {
    ChainPolicy.name: ChainPolicy,
    DDTreePolicy.name: DDTreePolicy,
}


def register_policy(name: str, factory: Callable[[int], DraftPolicy]) -> None:
    """Make ``factory(budget)`` available as ``SpeculativeDecoder(policy=name)``."""
    if name == "ar" or name in POLICIES:
        raise ValueError(f"policy name {name!r} is already taken")
    POLICIES[name] = factory


def make_policy(name: str, budget: int) -> DraftPolicy:
    """The registered policy ``name`` with ``budget`` draft nodes (``TypeError`` /
    ``ValueError`` naming the argument for a non-str name, an unknown name or a bad budget)."""
    if not isinstance(name, str):
        raise TypeError(f"policy must be a str name or a DraftPolicy, got {type(name).__name__}")
    factory = POLICIES.get(name)
    if factory is None:
        known = ", ".join(sorted(["ar", *POLICIES]))
        raise ValueError(f"policy must be one of {known} or a DraftPolicy, got {name!r}")
    return factory(budget)


# ---- policies defined in difftree_rt.policies, registered by name (imported on first use) ----
def _caddtree_factory(budget: int) -> DraftPolicy:
    from ..policies import CaDDTreePolicy

    return CaDDTreePolicy(budget)


def _presto_factory(budget: int) -> DraftPolicy:
    from ..policies import PrestoPolicy

    return PrestoPolicy(budget)


def _taps_factory(budget: int) -> DraftPolicy:
    from ..policies import TapsPolicy

    return TapsPolicy(budget)


def _d2sd_factory(budget: int) -> DraftPolicy:
    from ..policies import D2SDPolicy

    return D2SDPolicy(budget)


POLICIES.setdefault("caddtree", _caddtree_factory)
POLICIES.setdefault("presto", _presto_factory)
POLICIES.setdefault("taps", _taps_factory)
POLICIES.setdefault("d2sd", _d2sd_factory)
