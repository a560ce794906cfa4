"""Graph mode: the speculative round over static buffers, captured in CUDA graphs on a GPU.

Vocabulary: B batch, S drafter block size, L = S - 1 draft depth, N tree capacity
(root included), P = path columns (``min(L, N - 1) + 1``), F feature width, V vocabulary,
S_max target cache rows, C drafter cache rows (``S_max + S``).

Every value one round hands to the next lives in a preallocated tensor written **in place**
(ALGORITHMS.md §9: a captured graph replays its recorded addresses, so a fresh tensor would be
silently ignored): the bonus token, the generated count, the done flag, the round counter, the
tree arrays, the drafter's pending context rows and their count, the output buffer, and the
target / drafter cache lengths. A round reads and writes only those buffers; it does no host
read (no ``.item()``/``.tolist()``/``bool(t)``) and its shapes depend only on host constants
(N, P, S and a key-span bucket), so it can be captured once and replayed with new values.

One round is two functions, captured as two graphs per (batch bucket, tree size, span bucket,
sampling mode): ``draft + select`` (drafter on ``[bonus, MASK...]`` over a fixed key span, the
policy's device-only selector, tree arrays copied into the static tree buffers) and
``verify + accept + commit`` (target verify, per-node choice keyed by the device round counter
and seed, ``tree_walk`` with the stop set and the remaining-token cap, KV commit, the path's
features for the next draft, the emitted tokens scattered into the output buffer). Two graphs
keep the tree buffers as the seam where a host-side policy could later sit between them.

Termination is decided on the device: ``tree_walk`` sees ``remaining = (max_new - generated) *
active``; a finished request's round therefore accepts nothing, emits nothing, commits nothing
and leaves every length unchanged (``active = ~done``), so rounds past the end are no-ops. The
host copies each round's status (accepted, next token, done, generated, emitted tokens) into a
pinned buffer without waiting, then reads the *previous* round's copy: it never waits on the
round in flight and stops at most one (no-op) round after the device decided to.

Buckets: one set of static buffers per batch size B (solo and batched calls alternate without
re-capturing), graphs per (B, tree-size bucket N, span, sampling structure). A policy whose tree
size varies per round (caddtree) lists several N (``DraftPolicy.size_buckets``); each round runs
in the bucket above the tree sizes of the last rounds the host knows (``_BucketPicker``), so the
verify pays for about the rows the policy uses, not its maximum. Redraft policies (d2sd) run both
drafting passes inside the draft graph; "ar" runs one target step per round (a one-node tree,
no drafter). A capture that fails goes on uncaptured with the same functions (a warning).

On CPU (or with ``capture=False``) the very same round functions run eagerly, which is what
makes graph mode testable without a GPU (with :func:`~difftree_rt.engine.host_sync.
forbid_host_sync` rejecting what a capture could not hold).
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ..models.dflash import DFlashCache
from ..models.target import TargetAdapter
from ..policies import DraftPolicy, PolicyInput, PolicyNeeds
from ..tree import DraftTree, anc_words
from .host_sync import HostSyncError, forbid_host_sync
from .request import CallStreamer, GenerateRequest
from .round_ops import emitted_tokens, start_stream, verify_tree, write_emitted
from .sampling import (
    RequestSettings,
    SamplingParams,
    choose_tokens,
    sampling_values,
    uses_top_p,
)
from .stats import GenerationStats, PhaseTimer

if TYPE_CHECKING:
    from .decoder import SpeculativeDecoder

__all__ = ["GraphRoundRunner", "HostSyncError", "forbid_host_sync", "span_bucket"]

#: Stop-token slots of the static stop buffer (unused slots hold -1, which no token equals).
#: Requests with more stop tokens run on the eager path.
MAX_STOPS = 16
#: Smallest key-span bucket (rows); spans grow by powers of two up to the cache capacity.
SPAN_MIN = 256
# Status columns copied to the host each round, before the P emitted tokens.
_ACC, _NEXT, _DONE, _GEN, _NEMIT, _NODES, _EMIT = 0, 1, 2, 3, 4, 5, 6
#: Tree-size buckets: a round's bucket covers twice the largest tree of the last rounds known.
BUCKET_HEADROOM = 2
BUCKET_WINDOW = 4


class _CaptureFailed(Exception):
    """A CUDA graph capture raised (carries the original error)."""

    def __init__(self, error: RuntimeError) -> None:
        super().__init__(str(error))
        self.error = error


def span_bucket(rows: int, capacity: int, minimum: int = SPAN_MIN) -> int:
    """The key span for ``rows`` needed rows: the next power of two ``>= max(rows, minimum)``,
    capped at ``capacity``. Few distinct spans -> few graphs; at most 2x the exact span."""
    if rows > capacity:
        raise ValueError(f"rows={rows} exceed the capacity {capacity}")
    span = max(int(minimum), 1)
    while span < rows:
        span *= 2
    return min(span, capacity)


def _sampling_key(params: SamplingParams) -> tuple[Any, ...]:
    """What a captured graph bakes in from the sampling parameters: its structure (greedy or
    not, top-k's k, whether top-p runs). The seed, the temperature and the top-p threshold are
    buffers, so every temperature / top-p value replays the same graph."""
    if params.greedy:
        return ("greedy",)
    return ("sample", params.top_k, uses_top_p(params))


@dataclass
class _State:
    """The static buffers of one runner (addresses fixed for its lifetime).

    Per-request ``[B]`` int64 unless noted.
    """

    bonus: Tensor  # next round's root token
    block: Tensor  # [B, S] int64: [bonus, MASK x L]
    generated: Tensor  # tokens emitted so far (the prefill's first token included)
    max_new: Tensor  # max_new_tokens of the request
    done: Tensor  # [B] bool: a stop token was emitted or max_new reached
    round_idx: Tensor  # [] int64: 1-based round counter (keys the sampling draws)
    seed: Tensor  # [B, 1] int64: each request's sampling seed
    sampling: Tensor  # [B, 2] float32: temperature, 1 - top_p (sampling_values)
    greedy: Tensor  # [B] bool: argmax rows of a batch mixing greedy and sampled requests
    stop: Tensor  # [MAX_STOPS] int64, -1 padded
    new_feat: Tensor  # [B, P, F] drafter dtype: verify features along the last path
    num_new: Tensor  # how many of new_feat's rows are real (accepted + 1, 0 when idle)
    # The eight DraftTree arrays per tree-size bucket N: [B, N] (anc [B, N, W], num_nodes [B]).
    trees: dict[int, tuple[Tensor, ...]]
    out: Tensor  # [B, S_max + 1] int64 emitted tokens; the last column is scratch
    status: Tensor  # [B, 6 + P] int64: accepted, next, done, generated, #emitted, tree nodes,
    # emitted

    def mutable(self) -> list[Tensor]:
        """Buffers a round changes that later rounds read (saved around capture warm-up)."""
        return [self.bonus, self.generated, self.done, self.round_idx, self.new_feat, self.num_new]


class _TargetStep(DraftPolicy):
    """Graph mode's "ar": no draft, a tree of the root alone (the last token), so a round is
    one target step through the same verify / walk / commit path."""

    name = "ar"
    needs = PolicyNeeds(chain=True, graph_safe=True)

    def __init__(self) -> None:
        super().__init__(1)

    def capacity(self, max_depth: int) -> int:
        return 1

    def select(self, inputs: PolicyInput) -> DraftTree:
        raise AssertionError("graph-mode 'ar' builds its one-node tree in place")


@dataclass
class _Slot:
    """One batch size's static buffers: the adapter they serve, the round state, the drafter
    cache and the pinned status double buffer with its events."""

    adapter: TargetAdapter
    state: _State
    dcache: DFlashCache | None  # None for "ar" (no drafter)
    vcache: DFlashCache | None  # the second-pass drafter's cache (redraft with a VP drafter)
    span_cap: int  # largest key span (scratch rows past it hold the second pass's blocks)
    stream: Any  # a needs.tracks_stream policy's device state (presto's n-gram tables), else None
    pinned: list[Tensor]
    events: list[Any]


class GraphRoundRunner:
    """Runs a decoder's speculative rounds on static buffers, captured in CUDA graphs on a GPU.

    Built by :class:`~difftree_rt.engine.decoder.SpeculativeDecoder` (``cuda_graphs``) for a
    graph-safe policy. Buffers are (re)allocated when the decoder's target adapter changes.

    Args:
        decoder: the owning decoder (its drafter, policy, prefill and streamer are used).
        capture: capture and replay CUDA graphs (CUDA targets only); False runs the same round
            functions eagerly.
        span_min: smallest key-span bucket (rows).
        warmup: eager warm-up runs of a round before its capture (lazy initialisation).

    Attributes:
        round_context: context manager factory wrapped around every round's functions
            (tests set it to :func:`forbid_host_sync`).
        on_round: called with the round number after each round is launched (tests record
            buffer addresses there).
        graphs: captured ``(draft+select, verify+commit)`` graph pairs by key.
    """

    def __init__(
        self,
        decoder: SpeculativeDecoder,
        *,
        capture: bool = True,
        span_min: int = SPAN_MIN,
        warmup: int = 2,
    ) -> None:
        policy, drafter = decoder.policy, decoder.drafter
        if policy is None:
            # "ar": every round verifies the root alone, i.e. one target step per round, on the
            # same static buffers (the graph-mode baseline).
            policy, drafter = _TargetStep(), None
        elif drafter is None:
            raise ValueError("graph mode with a drafting policy needs a drafter")
        if not policy.needs.graph_safe:
            raise ValueError(
                f"policy {decoder.policy_name!r} is not graph-safe (its select reads host values "
                "or has data-dependent shapes); use cuda_graphs=False"
            )
        if not isinstance(span_min, int) or span_min < 1:
            raise ValueError(f"span_min must be a positive int, got {span_min!r}")
        self.decoder = decoder
        self.policy = policy
        self.drafter = drafter
        # Redraft policies (d2sd): the second pass's drafter (the VP drafter, or the first one)
        # and the scratch rows its R blocks take past the key span.
        self.second = drafter
        self.redraft_rows = 0
        if policy.needs.redraft:
            assert drafter is not None
            if decoder.vp_drafter is not None:
                self.second = decoder.vp_drafter
            self.redraft_rows = policy.redraft_rows() * self.second.block_size
        self.block_size = drafter.block_size if drafter is not None else 1
        self.device = decoder.device
        self.capture = bool(capture) and self.device.type == "cuda"
        self.span_min = span_min
        self.warmup = warmup
        self.capacity = decoder.capacity
        # Tree-size buckets (N, ascending, the last = capacity): one pair of graphs per bucket;
        # each round runs in the bucket above the trees of the last rounds the host knows.
        self.buckets = sorted(set(policy.size_buckets(decoder.max_depth)) | {self.capacity})
        if self.buckets[-1] != self.capacity:
            raise ValueError(
                f"policy {decoder.policy_name!r}: size_buckets {self.buckets} exceed its "
                f"capacity {self.capacity}"
            )
        #: (batch size, bucket N) of the last launched rounds (diagnostics, tests; bounded, so a
        #: long-lived decoder does not grow it).
        self.bucket_log: collections.deque[tuple[int, int]] = collections.deque(maxlen=4096)
        #: Rounds whose largest tree filled a bucket below the capacity (its cut may have been
        #: capped there: lossless, but possibly fewer accepted tokens than eager).
        self.filled_rounds = 0
        #: Index into :attr:`buckets` each request starts in (None: the largest, no cap until
        #: the first tree sizes are known).
        self.start_bucket: int | None = None
        self.max_depth = decoder.max_depth
        self.path_cols = decoder.path_cols
        self.round_context: Callable[[], contextlib.AbstractContextManager[Any]] = (
            contextlib.nullcontext
        )
        self.on_round: Callable[[int], None] | None = None
        self.graphs: dict[tuple[Any, ...], tuple[Any, Any]] = {}
        # One set of static buffers per batch size (the batch bucket), so solo and batched
        # calls alternate without re-capturing; the current one is mirrored in the fields below.
        self._slots: dict[int, _Slot] = {}
        self._adapter: TargetAdapter | None = None
        self._dcache: DFlashCache | None = None
        self._vcache: DFlashCache | None = None
        self._span_cap = 0
        self._pstream: Any = None
        self._state: _State | None = None
        self._pinned: list[Tensor] = []
        self._events: list[Any] = []
        self._pool: Any = None
        self._params = SamplingParams()
        self._mixed = False  # the batch mixes greedy and sampled requests

    # ------------------------------------------------------------------------------------------
    # Buffers
    # ------------------------------------------------------------------------------------------
    def supports(self, adapter: TargetAdapter, stop: Tensor | None, batch_size: int = 1) -> bool:
        """Whether a request fits the runner's buckets (else the decoder runs it eagerly)."""
        if batch_size != adapter.batch_size or adapter.validate:
            return False
        return stop is None or stop.numel() <= MAX_STOPS

    def _ensure(self, adapter: TargetAdapter) -> _State:
        """The static buffers for ``adapter``: allocated once per (batch size, adapter); a new
        adapter for a batch size drops that size's buffers and graphs."""
        num_b = adapter.batch_size
        slot = self._slots.get(num_b)
        if slot is None or slot.adapter is not adapter:
            self._drop(num_b)
            slot = self._allocate(adapter)
            self._slots[num_b] = slot
        # Keep only the buffers of adapters the decoder still holds (its solo adapter and its
        # current batch adapter): a replaced adapter's KV cache must not stay alive here.
        live = (adapter, self.decoder.adapter, getattr(self.decoder, "_batch_adapter", None))
        for b in [b for b, sl in self._slots.items() if not any(sl.adapter is a for a in live)]:
            self._drop(b)
        self._adapter, self._state, self._dcache = slot.adapter, slot.state, slot.dcache
        self._vcache, self._span_cap = slot.vcache, slot.span_cap
        self._pstream = slot.stream
        self._pinned, self._events = slot.pinned, slot.events
        return slot.state

    def _drop(self, num_b: int) -> None:
        """Forget batch size ``num_b``'s buffers and graphs."""
        self._slots.pop(num_b, None)
        self.graphs = {k: g for k, g in self.graphs.items() if k[0] != num_b}

    def _allocate(self, adapter: TargetAdapter) -> _Slot:
        dev, drafter, second = self.device, self.drafter, self.second
        num_b, p, s = adapter.batch_size, self.path_cols, self.block_size
        i64 = dict(dtype=torch.long, device=dev)
        i32 = dict(dtype=torch.int32, device=dev)
        # Context rows never exceed the target's committed rows (< S_max); + S for the block
        # and the padded append past them; + the second pass's blocks for redraft policies.
        span_cap = adapter.max_length + s
        dcache = vcache = None
        if drafter is not None and second is drafter:
            dcache = drafter.new_cache(batch_size=num_b, capacity=span_cap + self.redraft_rows)
        elif drafter is not None and second is not None:
            dcache = drafter.new_cache(batch_size=num_b, capacity=span_cap)
            vcache = second.new_cache(batch_size=num_b, capacity=span_cap + self.redraft_rows)
        mask_id = drafter.mask_token_id if drafter is not None else 0
        block = torch.full((num_b, s), mask_id, **i64)
        feat = (drafter.config.feature_size, drafter.dtype) if drafter is not None else (1, None)
        trees = {
            n: (
                torch.zeros(num_b, n, **i32),
                torch.full((num_b, n), -1, **i32),
                torch.zeros(num_b, n, **i32),
                torch.zeros(num_b, n, dtype=torch.float32, device=dev),
                torch.full((num_b, n), -1, **i32),
                torch.full((num_b, n), -1, **i32),
                torch.zeros(num_b, n, anc_words(n), **i32),
                torch.ones(num_b, **i32),
            )
            for n in self.buckets
        }
        state = _State(
            bonus=torch.zeros(num_b, **i64),
            block=block,
            generated=torch.zeros(num_b, **i64),
            max_new=torch.zeros(num_b, **i64),
            done=torch.zeros(num_b, dtype=torch.bool, device=dev),
            round_idx=torch.zeros((), **i64),
            seed=torch.zeros(num_b, 1, **i64),
            sampling=torch.ones(num_b, 2, dtype=torch.float32, device=dev),
            greedy=torch.zeros(num_b, dtype=torch.bool, device=dev),
            stop=torch.full((MAX_STOPS,), -1, **i64),
            new_feat=torch.zeros(num_b, p, feat[0], dtype=feat[1], device=dev),
            num_new=torch.zeros(num_b, **i64),
            trees=trees,
            out=torch.full((num_b, adapter.max_length + 1), -1, **i64),
            status=torch.zeros(num_b, _EMIT + p, **i64),
        )
        # The policy's stream state covers every token the target's cache can commit + the bonus.
        pstream = None
        if self.policy.needs.tracks_stream:
            pstream = self.policy.new_stream(num_b, adapter.max_length + 1, dev)
        pin = self.device.type == "cuda"
        pinned = [torch.zeros(num_b, _EMIT + p, dtype=torch.long, pin_memory=pin) for _ in range(2)]
        events: list[Any] = []
        if self.device.type == "cuda":
            events = [torch.cuda.Event() for _ in range(2)]
            if self._pool is None:
                self._pool = torch.cuda.graph_pool_handle()
        return _Slot(adapter, state, dcache, vcache, span_cap, pstream, pinned, events)

    def buffers(self) -> dict[str, Tensor]:
        """Every static tensor a round touches, by name (for address-stability checks)."""
        st, adapter, dc = self._state, self._adapter, self._dcache
        if st is None or adapter is None:
            return {}
        out: dict[str, Tensor] = {
            name: getattr(st, name)
            for name in ("bonus", "block", "generated", "max_new", "done", "round_idx", "seed",
                         "sampling", "greedy", "stop", "new_feat", "num_new", "out", "status")
        }  # fmt: skip
        for n, tree in st.trees.items():
            out.update({f"tree{n}.{i}": t for i, t in enumerate(tree)})
        out["target.base_len"] = adapter.cache.base_len
        out.update({f"target.k{i}": t for i, t in enumerate(adapter.cache.key_cache)})
        out.update({f"target.v{i}": t for i, t in enumerate(adapter.cache.value_cache)})
        if dc is not None:
            out["drafter.lengths"] = dc.lengths
            out.update({f"drafter.k{i}": t for i, t in enumerate(dc.keys)})
            out.update({f"drafter.v{i}": t for i, t in enumerate(dc.values)})
        vc = self._vcache
        if vc is not None:
            out["vp_drafter.lengths"] = vc.lengths
            out.update({f"vp_drafter.k{i}": t for i, t in enumerate(vc.keys)})
            out.update({f"vp_drafter.v{i}": t for i, t in enumerate(vc.values)})
        if self._pstream is not None:
            out.update({f"policy.stream{i}": t for i, t in enumerate(self._pstream.tensors())})
        return out

    # ------------------------------------------------------------------------------------------
    # The round (static buffers only: no host reads, shapes fixed by host constants)
    # ------------------------------------------------------------------------------------------
    def _draft_select(self, span: int, nb: int) -> None:
        """Draft on ``[bonus, MASK...]`` over key rows ``[0, span)``, select a tree of capacity
        ``nb`` (a tree-size bucket), fill that bucket's tree buffers."""
        st, dc, drafter = self._state, self._dcache, self.drafter
        assert st is not None
        if drafter is None or dc is None:
            st.trees[nb][0][:, 0].copy_(st.bonus)  # "ar": the root alone, holding the last token
            return
        # The pending rows (the last path's features) make the context exactly [0, start).
        drafter.append_context_fixed(dc, st.new_feat, st.num_new)
        vc = self._vcache
        if vc is not None:
            self.second.append_context_fixed(vc, st.new_feat.to(self.second.dtype), st.num_new)
        st.block[:, 0].copy_(st.bonus)
        logits = drafter.draft_fixed(st.block, dc, span)
        # Graph-safe policies ignore round_idx (the host counter would be baked into a graph).
        assert self._adapter is not None
        inputs = PolicyInput(
            logits, st.bonus, 0, None, committed=self._adapter.cache.base_len, fixed_shape=True,
            stream=self._pstream, max_nodes=nb - 1 if nb < self.capacity else None,
        )  # fmt: skip
        if self.policy.needs.redraft:
            # The second pass (d2sd): R blocks over the same context, at scratch rows past the
            # key span; its cache holds exactly the same context rows as the first one.
            second = self.second
            blocks = self.policy.redraft_blocks(inputs, second.block_size, second.mask_token_id)
            inputs.branch_logits = second.draft_branches(
                blocks, dc if vc is None else vc, span=span
            )
        tree = self.policy.select(inputs)
        for buf, arr in zip(st.trees[nb], tree.arrays(), strict=True):
            buf.copy_(arr)

    def _verify_commit(self, nb: int) -> None:
        """Verify bucket ``nb``'s tree, choose per node, walk, commit, emit; update every state
        buffer."""
        from .. import ops

        st, adapter = self._state, self._adapter
        assert st is not None and adapter is not None
        params = self._params
        tree = DraftTree.from_arrays(st.trees[nb], max_depth=self.path_cols - 1)
        verified = verify_tree(adapter, tree, self.policy.needs.chain)
        choice = choose_tokens(
            verified.logits, params, st.round_idx, seed=st.seed, values=st.sampling,
            greedy=st.greedy if self._mixed else None,
        )  # fmt: skip
        active = ~st.done
        # A finished request gets a zero cap: the walk then accepts and emits nothing.
        remaining = (st.max_new - st.generated) * active
        walk = ops.tree_walk(tree, choice, st.stop, remaining)
        adapter.commit(walk.path, walk.accepted, active)
        accepted = walk.accepted.to(torch.long)
        next_token = walk.next_token.to(torch.long)
        if self.drafter is not None:
            assert verified.features is not None
            st.new_feat.copy_(adapter.gather_path(verified.features, walk.path))
            st.num_new.copy_((accepted + 1) * active)
        # Emitted: the path's draft tokens then the next bonus (when any); invalid entries go
        # to the scratch column, so the write needs no host-side length.
        cols = torch.arange(self.path_cols, device=self.device)
        emit, num_emit = emitted_tokens(tree, walk.path, accepted, next_token, cols)
        num_emit = num_emit * active
        if self._pstream is not None:
            self.policy.extend_stream(self._pstream, emit, num_emit)
        keep, _ = write_emitted(st.out, st.generated, emit, num_emit, cols, st.out.shape[1] - 1)
        st.generated.add_(num_emit)
        st.done.logical_or_(walk.done)
        st.bonus.copy_(torch.where(next_token >= 0, next_token, st.bonus))
        st.round_idx.add_(1)
        st.status[:, _ACC].copy_(accepted)
        st.status[:, _NEXT].copy_(next_token)
        st.status[:, _DONE].copy_(st.done)
        st.status[:, _GEN].copy_(st.generated)
        st.status[:, _NEMIT].copy_(num_emit)
        st.status[:, _NODES].copy_(tree.num_nodes)
        st.status[:, _EMIT:].copy_(torch.where(keep, emit, -1))

    # ------------------------------------------------------------------------------------------
    # Launch: eager, or capture once per key and replay
    # ------------------------------------------------------------------------------------------
    def _run_round(self, span: int, nb: int, timer: PhaseTimer) -> None:
        adapter = self._adapter
        assert adapter is not None
        adapter.cache.set_fixed_span(min(span, adapter.max_length))
        self.bucket_log.append((adapter.batch_size, nb))
        if self.capture:
            try:
                g_draft, g_verify = self._graphs_for(span, nb)
            except _CaptureFailed as failed:
                self._stop_capturing(failed.error)
            else:
                with timer.phase("draft"):
                    g_draft.replay()
                with timer.phase("verify"):
                    g_verify.replay()
                return
        with self.round_context():
            with timer.phase("draft"):
                self._draft_select(span, nb)
            with timer.phase("verify"):
                self._verify_commit(nb)

    def _stop_capturing(self, err: RuntimeError) -> None:
        """A capture failed (an op that cannot be captured on this platform): go on with the
        same round functions uncaptured. Lossless — the state buffers are untouched, since a
        capture records kernels without running them and the warm-up restored its rounds —
        but every round pays its launches again; the warning says so once per decoder."""
        import warnings

        self.capture = False
        self.graphs.clear()
        warnings.warn(
            f"graph mode: CUDA graph capture failed ({type(err).__name__}: {err}); this decoder "
            "now runs the same static-buffer rounds without capture (same tokens, more launch "
            "overhead). SpeculativeDecoder(cuda_graphs=False) selects the eager path instead.",
            RuntimeWarning,
            stacklevel=4,
        )

    def _graphs_for(self, span: int, nb: int) -> tuple[Any, Any]:
        assert self._adapter is not None
        sampling = (*_sampling_key(self._params), self._mixed)
        key = (self._adapter.batch_size, nb, span, sampling)
        found = self.graphs.get(key)
        if found is not None:
            return found
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            # Warm-up off the capture stream (lazy cuBLAS/kernel initialisation, allocator
            # growth), as PyTorch requires.
            self._warm_up(span, nb)
        torch.cuda.current_stream(self.device).wait_stream(side)
        g_draft, g_verify = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(g_draft, pool=self._pool):
                self._draft_select(span, nb)
            with torch.cuda.graph(g_verify, pool=self._pool):
                self._verify_commit(nb)
        except RuntimeError as err:
            # Only a failed capture is recoverable: it records kernels without running them,
            # so no state buffer changed (a warm-up error above propagates as is).
            raise _CaptureFailed(err) from err
        self.graphs[key] = (g_draft, g_verify)
        return g_draft, g_verify

    def _warm_up(self, span: int, nb: int) -> None:
        """Run ``warmup`` rounds for real, then undo them: the state buffers come back from
        copies; rounds only write cache rows past the committed lengths, so caches need none."""
        st = self._state
        assert st is not None and self._adapter is not None
        mutable = [*st.mutable(), self._adapter.cache.base_len]
        if self._pstream is not None:
            mutable += self._pstream.tensors()
        for cache in (self._dcache, self._vcache):
            if cache is not None:
                mutable.append(cache.lengths)
        saved = [t.clone() for t in mutable]
        for _ in range(self.warmup):
            self._draft_select(span, nb)
            self._verify_commit(nb)
            for t, s in zip(mutable, saved, strict=True):
                t.copy_(s)

    def _stage(self, r: int) -> None:
        """Queue the copy of round r's status into pinned slot r % 2 (no wait)."""
        st = self._state
        assert st is not None
        slot = r % 2
        self._pinned[slot].copy_(st.status, non_blocking=self.device.type == "cuda")
        if self._events:
            self._events[slot].record()

    def _read(self, r: int) -> list[list[int]]:
        """Round r's staged status, one row per request (waits for round r only, never for a
        later round)."""
        slot = r % 2
        if self._events:
            self._events[slot].synchronize()
        return [[int(v) for v in row] for row in self._pinned[slot].tolist()]

    # ------------------------------------------------------------------------------------------
    # Generate
    # ------------------------------------------------------------------------------------------
    def generate(
        self,
        adapter: TargetAdapter,
        ids: Tensor,
        request: GenerateRequest,
        stats: GenerationStats,
        timer: PhaseTimer,
    ) -> Tensor | None:
        """One request in graph mode; None (nothing done) when it falls outside the buckets.

        Args:
            adapter: the target adapter, reset, sized for ``T + max_new + N`` rows.
            ids: ``[1, T]`` prompt on the device.
            request: the validated call (``max_new_tokens``, sampling parameters, stop tokens
                ``[S]`` int64 on the device or None, its streamer).
            stats, timer: filled like the eager path (phases: draft = draft + select,
                verify = verify + accept + commit, host = the late status read).

        Returns:
            ``[1, new]`` int64 generated tokens.
        """
        max_new, params, stop = request.max_new, request.params, request.stop
        if not self.supports(adapter, stop, ids.shape[0]):
            return None
        dec = self.decoder
        prompt_len = ids.shape[1]
        self._check_fits(adapter, prompt_len, max_new)
        st = self._ensure(adapter)
        self._params = params

        first, features, is_stop = dec._prefill(adapter, ids, params, stop, st.out, timer)
        with timer.phase("host"):
            (stopped,) = dec._host_read(is_stop)
        request.streamer.span(st.out, 0, 1)
        if stopped or max_new <= 1:
            stats.stopped = bool(stopped)
            return st.out[:, :1].clone()
        req = RequestSettings(
            torch.full((1, 1), params.seed, dtype=torch.long, device=self.device),
            torch.tensor([sampling_values(params)], dtype=torch.float32, device=self.device),
        )
        self._setup(ids, features, [prompt_len], first, is_stop, max_new, req, stop)
        gen = self._rounds([prompt_len], [max_new], [stats], stats, request.streamer)
        out = st.out[:, : gen[0]].clone()
        stats.stopped = dec._ended_on_stop(out, stop)
        return out

    def generate_batch(
        self,
        adapter: TargetAdapter,
        right: Tensor,
        lengths: list[int],
        request: GenerateRequest,
        per: list[GenerationStats],
        stats: GenerationStats,
        timer: PhaseTimer,
    ) -> tuple[Tensor, list[int]] | None:
        """B > 1 requests in graph mode (the batch bucket is B itself); None (nothing done) when
        they fall outside the buckets.

        Args:
            adapter: the batch's target adapter (``batch_size`` B), reset, sized for
                ``T + max_new + N`` rows.
            right: ``[B, T]`` prompts, **right**-padded (request b at columns ``0..T_b-1``).
            lengths: the B prompt lengths ``T_b``.
            request: the validated call: ``max_new`` the largest ``max_new_tokens``
                (``settings.max_new`` holds each request's), ``params`` the batch's sampling
                structure, ``settings`` each request's seed and values, ``stop`` ``[S]``
                int64 stop tokens on the device or None, its streamer.
            per: B per-request stats (accepted lengths, emitted per round); ``stats`` the
                aggregate (phase times).
            timer: phase timer of the call (prefill, setup reads).

        Returns:
            ``(out [B, >= max(new_b)] int64, new_b per request)``: request b's tokens are
            ``out[b, :new_b]``; exactly the eager batch path's (and each solo run's) tokens.
        """
        max_new, params, stop = request.max_new, request.params, request.stop
        req = request.settings
        num_b, num_t = right.shape
        if not self.supports(adapter, stop, num_b):
            return None
        dec = self.decoder
        self._check_fits(adapter, num_t, max_new)
        st = self._ensure(adapter)
        self._params = params
        first, features, is_stop = dec._prefill_batch(
            adapter, right, lengths, params, req, stop, st.out, timer
        )
        self._setup(right, features, lengths, first, is_stop, max_new, req, stop)
        request.streamer.rows(st.out, [0] * num_b, [1] * num_b)  # setup: host reads allowed
        caps = req.caps if req.caps is not None else [max_new] * num_b
        gen = self._rounds(lengths, caps, per, stats, request.streamer)
        return st.out[:, : max(gen)].clone(), gen

    def _check_fits(self, adapter: TargetAdapter, prompt_len: int, max_new: int) -> None:
        """Once per request (the rounds skip host capacity checks): prompt + new tokens + one
        tree must fit the target cache."""
        need = prompt_len + max_new + self.capacity
        if need > adapter.max_length:
            raise ValueError(
                f"max_length={adapter.max_length} is too small for this request: prompt + "
                f"max_new_tokens + one tree of N={self.capacity} rows needs {need}"
            )

    def _setup(
        self,
        prompts: Tensor,
        features: Tensor | None,
        lengths: list[int],
        first: Tensor,
        is_stop: Tensor,
        max_new: int,
        req: RequestSettings,
        stop: Tensor | None,
    ) -> None:
        """Per-request values into the static buffers, in place (setup: host syncs allowed):
        the prompt features into the drafter cache, the first token, counters, seeds, stops,
        the policy's stream state (``prompts [B, T]`` left-aligned). A request whose first
        token already ended it starts done (its rounds are no-ops)."""
        st = self._state
        assert st is not None
        counts = torch.tensor(lengths, dtype=torch.long, device=self.device)
        for drafter, cache in ((self.drafter, self._dcache), (self.second, self._vcache)):
            if drafter is not None and cache is not None:
                assert features is not None
                cache.reset()
                drafter.append_context_fixed(cache, features.to(drafter.dtype), counts)
        if self._pstream is not None:
            start_stream(self.policy, self._pstream, prompts, counts, first)
        st.bonus.copy_(first)
        st.generated.fill_(1)
        if req.max_new is not None:
            st.max_new.copy_(req.max_new)
        else:
            st.max_new.fill_(max_new)
        st.done.copy_(is_stop | (st.max_new <= 1))
        st.round_idx.fill_(1)
        st.seed.copy_(req.seed)
        st.sampling.copy_(req.values)
        self._mixed = req.greedy is not None
        st.greedy.copy_(req.greedy if req.greedy is not None else False)
        st.stop.fill_(-1)
        if stop is not None:
            st.stop[: stop.numel()].copy_(stop)
        st.num_new.zero_()

    def _rounds(
        self,
        lengths: list[int],
        caps: list[int],
        per: list[GenerationStats],
        stats: GenerationStats,
        streamer: CallStreamer,
    ) -> list[int]:
        """Launch rounds until the device reports every request done; returns the tokens each
        request generated. The host books round r - 1 while round r runs."""
        st, adapter = self._state, self._adapter
        assert st is not None and adapter is not None
        act = [not bool(d) for d in st.done.tolist()]  # setup read (before any round)
        gen = [1] * len(lengths)
        if not any(act):
            return gen
        block = self.block_size
        round_timer = PhaseTimer(stats, self.device, synchronize=False)
        known_round = 0  # the host's latest status: after prefill
        picker = _BucketPicker(self.buckets, self.start_bucket)
        r = 0
        try:
            while True:
                r += 1
                if r > max(caps) + 1:
                    raise RuntimeError("graph mode: the device never reported done (a bug)")
                # Committed length before round r <= what the host knows + P per round since.
                start_ub = max(
                    min(t + g - 1 + self.path_cols * (r - 1 - known_round), t + cap)
                    for t, g, cap in zip(lengths, gen, caps, strict=True)
                )
                span = span_bucket(start_ub + block, self._span_cap, self.span_min)
                self._run_round(span, picker.launch(r), round_timer)
                self._stage(r)
                if self.on_round is not None:
                    self.on_round(r)
                if r == 1:
                    continue
                with round_timer.phase("host"):
                    status = self._read(r - 1)
                    nodes = [row[_NODES] for b, row in enumerate(status) if act[b]]
                    self.filled_rounds += picker.observe(r - 1, max(nodes, default=1))
                    for b, row in enumerate(status):
                        if act[b]:
                            act[b] = not self._consume(row, per[b], b, streamer)
                        gen[b] = row[_GEN]
                known_round = r - 1
                if not any(act):
                    break  # round r was launched after the end: a no-op on every output
        finally:
            adapter.cache.set_fixed_span(None)
        return gen

    def _consume(
        self, status: list[int], stats: GenerationStats, b: int, streamer: CallStreamer
    ) -> bool:
        """Book request b's staged status of one round into ``stats`` and the streamer; True
        when it is done."""
        acc, nxt, done, _gen, n_emit = status[_ACC:_NODES]
        stats.accepted_lengths.append(acc)
        stats.emitted_per_round.append(n_emit)
        streamer.request(b, status[_EMIT : _EMIT + n_emit])
        return bool(done) or nxt < 0


class _BucketPicker:
    """Chooses each round's tree-size bucket from the tree sizes the host has read (one round
    late): the smallest bucket with room for ``BUCKET_HEADROOM`` times the largest of the last
    ``BUCKET_WINDOW`` known trees (draft nodes), and a larger one than a round whose tree filled
    its bucket (its cut may have been capped there). Starts at the largest bucket.

    A capped round is still lossless (a best-first prefix of the tree is a tree); it only
    accepts at most what the smaller tree holds.
    """

    def __init__(self, buckets: list[int], start: int | None = None) -> None:
        self.buckets = buckets
        self.idx = len(buckets) - 1 if start is None else max(0, min(start, len(buckets) - 1))
        self.used: dict[int, int] = {}
        self.recent: list[int] = []

    def launch(self, r: int) -> int:
        """The bucket (N) for round r (remembered, to judge its status later)."""
        self.used[r] = self.idx
        return self.buckets[self.idx]

    def observe(self, r: int, nodes: int) -> bool:
        """Round r's largest tree among the requests active in it: ``nodes`` rows. Returns
        whether it filled a bucket below the largest."""
        used = self.used.pop(r)
        if len(self.buckets) == 1:
            return False
        self.recent = [*self.recent, nodes - 1][-BUCKET_WINDOW:]
        need = BUCKET_HEADROOM * max(self.recent)
        idx = next((i for i, n in enumerate(self.buckets) if n - 1 >= need), len(self.buckets) - 1)
        filled = nodes >= self.buckets[used] and used < len(self.buckets) - 1
        if filled:  # the cut may have stopped at the cap
            idx = max(idx, used + 1)
        self.idx = min(idx, len(self.buckets) - 1)
        return filled
