"""The two launchers of the one round (``engine/round.py``): eager and graph.

Vocabulary: B batch, T longest prompt, S drafter block size, N tree capacity, P path columns,
S_max target cache rows.

Both launchers prefill, set a :class:`~difftree_rt.engine.round.Round` up and drive the *same*
step; they differ only in who launches it and when the host looks:

- :class:`EagerRunner` launches the step's phases directly, reads each round's status right
  after it (one device->host read) and gives the next round exact key spans (the committed
  length it just read). Policies that read host values in ``select``, ``needs_context``
  policies, ``validate=True`` and requests outside graph mode's buckets run here.
- :class:`GraphRunner` adds what graph mode needs: key-span buckets (powers of two), tree-size
  buckets chosen one round late (:class:`BucketPicker`), capture and replay of the step as two
  CUDA graphs per (B, tree-size bucket, span) — ``draft + select`` and ``verify + accept +
  commit``, the static tree buffers being the seam — and the one-round-late status read: the
  host copies round r's status into a pinned buffer without waiting and books round r - 1
  while round r runs, so it never waits on the round in flight and stops at most one (no-op)
  round after the device decided to. On CPU (or ``capture=False``) the same functions run
  uncaptured, which is what makes graph mode testable without a GPU (with
  :func:`~difftree_rt.engine.host_sync.forbid_host_sync` rejecting what a capture could not
  hold). A capture that fails goes on uncaptured (a warning).

Rounds (state, drafter caches, policy stream) live in a :class:`RoundPool` shared by both
launchers: one per batch size, kept while the decoder holds its target adapter, so solo and
batched calls alternate without re-allocating or re-capturing.
"""

from __future__ import annotations

import collections
import contextlib
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..models.target import TargetAdapter
from ..tree import DraftTree
from .host_sync import HostSyncError, forbid_host_sync
from .request import CallStreamer, GenerateRequest
from .round import MAX_STOPS, STATUS, HostView, Round, RoundConfig, RoundState
from .sampling import choose
from .stats import GenerationStats, PhaseTimer

__all__ = [
    "MAX_STOPS",
    "BucketPicker",
    "EagerRunner",
    "GraphRunner",
    "HostSyncError",
    "RoundPool",
    "forbid_host_sync",
    "span_bucket",
]

#: Smallest key-span bucket (rows); spans grow by powers of two up to the cache capacity.
SPAN_MIN = 256
#: Tree-size buckets: a round's bucket covers twice the largest tree of the last rounds known.
BUCKET_HEADROOM = 2
BUCKET_WINDOW = 4


def span_bucket(rows: int, capacity: int, minimum: int = SPAN_MIN) -> int:
    """The key span for ``rows`` needed rows: the next power of two ``>= max(rows, minimum)``,
    capped at ``capacity``. Few distinct spans -> few graphs; at most 2x the exact span."""
    if rows > capacity:
        raise ValueError(f"rows={rows} exceed the capacity {capacity}")
    span = max(int(minimum), 1)
    while span < rows:
        span *= 2
    return min(span, capacity)


class RoundPool:
    """The decoder's rounds, one per batch size, each bound to one target adapter.

    Args:
        cfg: the decoder's :class:`RoundConfig`.
        live: returns the adapters the decoder still holds (a round of any other adapter is
            dropped, so a replaced adapter's KV cache is not kept alive here).
    """

    def __init__(self, cfg: RoundConfig, live: Callable[[], tuple[Any, ...]]) -> None:
        self.cfg = cfg
        self.live = live
        self.rounds: dict[int, Round] = {}

    def get(self, adapter: TargetAdapter) -> Round:
        """The round serving ``adapter`` (allocated on first use or when the adapter changed)."""
        rnd = self.rounds.get(adapter.batch_size)
        if rnd is None or rnd.adapter is not adapter:
            rnd = Round(self.cfg, adapter)
            self.rounds[adapter.batch_size] = rnd
        held = (adapter, *self.live())
        for b in [b for b, r in self.rounds.items() if not any(r.adapter is a for a in held)]:
            del self.rounds[b]
        return rnd


class EagerRunner:
    """Launches the round's phases directly, one status read per round, exact key spans.

    Args:
        pool: the decoder's :class:`RoundPool`.
        profile: on CUDA, synchronise at phase boundaries so per-phase times are exact.
    """

    def __init__(self, pool: RoundPool, profile: bool = True) -> None:
        self.pool = pool
        self.cfg = pool.cfg
        self.policy = pool.cfg.policy
        self.device = pool.cfg.device
        self.capacity = pool.cfg.capacity
        self.path_cols = pool.cfg.path_cols
        self.block_size = pool.cfg.block_size
        self.profile = profile

    def supports(self, adapter: TargetAdapter, stop: Tensor | None, batch_size: int = 1) -> bool:
        """Whether this launcher runs such a request (the eager one runs every request)."""
        return True

    # ------------------------------------------------------------------------------------------
    # One call
    # ------------------------------------------------------------------------------------------
    def generate(
        self,
        adapter: TargetAdapter,
        right: Tensor,
        request: GenerateRequest,
        per: list[GenerationStats],
        stats: GenerationStats,
    ) -> tuple[Tensor, list[int]]:
        """Run one call's requests to the end.

        Args:
            adapter: the target adapter (batch size B), reset, sized for ``T + max_new + N``.
            right: ``[B, T]`` prompts, right-padded (request b at columns ``0..T_b-1``).
            request: the validated call (lengths, caps, sampling, stops, streamer).
            per: B per-request stats (accepted lengths, emitted per round).
            stats: the call's stats (phase times).

        Returns:
            ``(out [B, >= max(new_b)] int64, new_b per request)``: request b's tokens are
            ``out[b, :new_b]``.
        """
        lengths = request.lengths
        self._check_fits(adapter, right.shape[1], request.max_new)
        rnd = self._round_for(adapter)
        st = rnd.state
        timer = PhaseTimer(stats, self.device, self.profile)
        with timer.phase("prefill"):
            same = all(n == right.shape[1] for n in lengths)
            out = adapter.prefill(right, last_logits_only=True, lengths=None if same else lengths)
            zero = torch.zeros(right.shape[0], dtype=torch.long, device=self.device)
            first = choose(out.logits, request.sampling, zero)[:, 0]
            st.out[:, 0] = first
        rnd.setup(right, lengths, out.features, first, request.caps_t, request.sampling,
                  request.stop)  # fmt: skip
        request.streamer.rows(st.out, [0] * len(lengths), [1] * len(lengths))
        gen = self._rounds(rnd, request, per, stats, timer)
        return st.out[:, : max(gen)].clone(), gen

    def _round_for(self, adapter: TargetAdapter) -> Round:
        """The round serving ``adapter`` (graph mode also makes it current)."""
        return self.pool.get(adapter)

    def _check_fits(self, adapter: TargetAdapter, prompt_len: int, max_new: int) -> None:
        """Once per call (the rounds skip host capacity checks): prompt + new tokens + one tree
        must fit the target cache."""
        need = prompt_len + max_new + self.capacity
        if need > adapter.max_length:
            raise ValueError(
                f"max_length={adapter.max_length} is too small for this request: prompt + "
                f"max_new_tokens + one tree of N={self.capacity} rows needs {need}"
            )

    @staticmethod
    def _book(row: list[int], stats: GenerationStats, b: int, streamer: CallStreamer) -> bool:
        """Book request b's status row of one round into ``stats`` and the streamer; True when
        it is done."""
        n_emit = row[STATUS.NEMIT]
        stats.accepted_lengths.append(row[STATUS.ACC])
        stats.emitted_per_round.append(n_emit)
        streamer.request(b, row[STATUS.EMIT : STATUS.EMIT + n_emit])
        return bool(row[STATUS.DONE]) or row[STATUS.NEXT] < 0

    def _rounds(
        self,
        rnd: Round,
        request: GenerateRequest,
        per: list[GenerationStats],
        stats: GenerationStats,
        timer: PhaseTimer,
    ) -> list[int]:
        """Rounds until every request is done, reading each round's status right after it."""
        st, adapter = rnd.state, rnd.adapter
        act = [not bool(d) for d in st.done.tolist()]
        gen = [1] * len(act)
        batch = len(act) > 1
        adapter.cache.set_fixed_span(None)
        pending = 1  # the prompt's rows were appended at setup
        r = 0
        while any(act):
            r += 1
            # Exact spans and row counts: the committed lengths are known after every read.
            span = min(adapter.cache.sync_len_bound() + self.block_size, rnd.span_cap)
            cols = lens = None
            if st.context is not None:
                cols = max(t + g for t, g in zip(request.lengths, gen, strict=True))
                lens = [t + g - 1 for t, g in zip(request.lengths, gen, strict=True)]
            host = HostView(r, pending, cols, lens if batch else None)
            self._step(rnd, span, host, timer)
            with timer.phase("host"):
                pending = 1
                for b, row in enumerate(st.status.tolist()):
                    if act[b]:
                        pending = max(pending, row[STATUS.ACC] + 1)  # this round's num_new
                        act[b] = not self._book(row, per[b], b, request.streamer)
                    gen[b] = row[STATUS.GEN]
        return gen

    def _step(self, rnd: Round, span: int, host: HostView, timer: PhaseTimer) -> None:
        """One round, phase by phase (the full tree capacity; the policy's own tree shape)."""
        if self.cfg.drafter is None:
            tree = rnd.root_tree()
        else:
            with timer.phase("draft"):
                inputs = rnd.draft(span, None, host)
            with timer.phase("select"):
                tree = rnd.select(inputs)
        self._verify_commit_tree(rnd, tree, timer)

    @staticmethod
    def _verify_commit_tree(rnd: Round, tree: DraftTree, timer: PhaseTimer) -> None:
        """The round's second half, phase by phase: verify ``tree``, accept, commit."""
        with timer.phase("verify"):
            verified = rnd.verify(tree)
        with timer.phase("accept"):
            walk = rnd.accept(tree, verified)
        with timer.phase("commit"):
            rnd.commit(tree, verified, walk)


class GraphRunner(EagerRunner):
    """The same round over static buffers with bucketed shapes and no host read inside a round,
    captured in CUDA graphs on a GPU.

    Args:
        pool: the decoder's :class:`RoundPool` (the policy must be graph-safe).
        capture: capture and replay CUDA graphs (CUDA targets only); False runs the same round
            functions uncaptured.
        span_min: smallest key-span bucket (rows).
        warmup: eager warm-up runs of a round before its capture (lazy initialisation).

    Attributes:
        round_context: context manager factory wrapped around every uncaptured round (tests set
            it to :func:`forbid_host_sync`).
        on_round: called with the round number after each round is launched (tests record
            buffer addresses there).
        graphs: captured ``(draft+select, verify+commit)`` graph pairs by key.
        bucket_log: (B, tree-size bucket N) of the last launched rounds (bounded).
        filled_rounds: rounds whose largest tree filled a bucket below the capacity (its cut
            may have been capped there: lossless, possibly fewer accepted tokens than eager).
        start_bucket: index into ``buckets`` each call starts in (None: the largest).
    """

    def __init__(
        self,
        pool: RoundPool,
        *,
        capture: bool = True,
        span_min: int = SPAN_MIN,
        warmup: int = 2,
    ) -> None:
        super().__init__(pool, profile=False)
        if not self.policy.needs.graph_safe:
            name = self.policy.name or type(self.policy).__name__
            raise ValueError(
                f"policy {name!r} is not graph-safe (its select reads host values or has "
                "data-dependent shapes); use cuda_graphs=False"
            )
        if not isinstance(span_min, int) or span_min < 1:
            raise ValueError(f"span_min must be a positive int, got {span_min!r}")
        self.capture = bool(capture) and self.device.type == "cuda"
        self.span_min = span_min
        self.warmup = warmup
        self.buckets = list(self.cfg.buckets)
        self.bucket_log: collections.deque[tuple[int, int]] = collections.deque(maxlen=4096)
        self.filled_rounds = 0
        self.start_bucket: int | None = None
        self.round_context: Callable[[], contextlib.AbstractContextManager[Any]] = (
            contextlib.nullcontext
        )
        self.on_round: Callable[[int], None] | None = None
        self.graphs: dict[tuple[Any, ...], tuple[Any, Any]] = {}
        self._round: Round | None = None
        self._graph_rounds: dict[int, Round] = {}  # the round each B's graphs were captured on
        self._pinned: dict[int, list[Tensor]] = {}
        self._events: dict[int, list[Any]] = {}
        self._pool: Any = None

    # Views of the current round (tests and diagnostics read them).
    @property
    def _state(self) -> RoundState | None:
        return self._round.state if self._round is not None else None

    @property
    def _adapter(self) -> TargetAdapter | None:
        return self._round.adapter if self._round is not None else None

    @property
    def _dcache(self) -> Any:
        return self._round.dcache if self._round is not None else None

    @property
    def _vcache(self) -> Any:
        return self._round.vcache if self._round is not None else None

    @property
    def _pstream(self) -> Any:
        return self._round.stream if self._round is not None else None

    def supports(self, adapter: TargetAdapter, stop: Tensor | None, batch_size: int = 1) -> bool:
        """Whether a request fits graph mode's buckets (else the decoder runs it eagerly)."""
        if batch_size != adapter.batch_size or adapter.validate:
            return False
        if self.policy.needs.needs_context:
            return False
        return stop is None or stop.numel() <= MAX_STOPS

    def _round_for(self, adapter: TargetAdapter) -> Round:
        rnd = self.pool.get(adapter)
        self._bind(rnd)
        return rnd

    def _bind(self, rnd: Round) -> None:
        """Make ``rnd`` current; a new round for a batch size drops that size's graphs."""
        num_b = rnd.batch_size
        if self._graph_rounds.get(num_b) is not rnd:
            self.graphs = {k: g for k, g in self.graphs.items() if k[0] != num_b}
            self._graph_rounds[num_b] = rnd
            pin = self.device.type == "cuda"
            cols = STATUS.EMIT + self.path_cols
            self._pinned[num_b] = [
                torch.zeros(num_b, cols, dtype=torch.long, pin_memory=pin) for _ in range(2)
            ]
            self._events[num_b] = [torch.cuda.Event() for _ in range(2)] if pin else []
            if pin and self._pool is None:
                self._pool = torch.cuda.graph_pool_handle()
        live = set(map(id, self.pool.rounds.values()))
        for b in [b for b, r in self._graph_rounds.items() if id(r) not in live]:
            self._graph_rounds.pop(b)
            self.graphs = {k: g for k, g in self.graphs.items() if k[0] != b}
        self._round = rnd

    def buffers(self) -> dict[str, Tensor]:
        """Every static tensor a round touches, by name (for address-stability checks)."""
        rnd = self._round
        if rnd is None:
            return {}
        st, adapter = rnd.state, rnd.adapter
        names = ("bonus", "block", "generated", "max_new", "done", "round_idx", "temperature",
                 "top_k", "top_p", "seed", "stop", "new_feat", "num_new", "out",
                 "status")  # fmt: skip
        out: dict[str, Tensor] = {name: getattr(st, name) for name in names}
        for n, tree in st.trees.items():
            out.update({f"tree{n}.{i}": t for i, t in enumerate(tree)})
        out["target.base_len"] = adapter.cache.base_len
        out.update({f"target.k{i}": t for i, t in enumerate(adapter.cache.key_cache)})
        out.update({f"target.v{i}": t for i, t in enumerate(adapter.cache.value_cache)})
        out.update({f"target.linear{i}": t for i, t in enumerate(adapter.cache.linear.tensors())})
        for name, cache in (("drafter", rnd.dcache), ("vp_drafter", rnd.vcache)):
            if cache is not None:
                out[f"{name}.lengths"] = cache.lengths
                out.update({f"{name}.k{i}": t for i, t in enumerate(cache.keys)})
                out.update({f"{name}.v{i}": t for i, t in enumerate(cache.values)})
        if rnd.stream is not None:
            out.update({f"policy.stream{i}": t for i, t in enumerate(rnd.stream.tensors())})
        return out

    # ------------------------------------------------------------------------------------------
    # The round as two capturable functions (static buffers only)
    # ------------------------------------------------------------------------------------------
    def _draft_select(self, span: int, nb: int) -> None:
        """Draft over key rows ``[0, span)``, select a tree of capacity ``nb`` (a tree-size
        bucket) into that bucket's tree buffers."""
        rnd = self._round
        assert rnd is not None
        if self.cfg.drafter is None:
            rnd.root_tree()
            return
        inputs = rnd.draft(span, nb - 1 if nb < self.capacity else None)
        rnd.store_tree(rnd.select(inputs), nb)

    def _verify_commit(self, nb: int) -> None:
        """Verify bucket ``nb``'s tree, accept, commit, emit; update every state buffer."""
        rnd = self._round
        assert rnd is not None
        tree = rnd.buffered_tree(nb)
        verified = rnd.verify(tree)
        rnd.commit(tree, verified, rnd.accept(tree, verified))

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
        same round functions uncaptured. Lossless — a capture records kernels without running
        them and the warm-up restored its rounds, so the state is untouched — but every round
        pays its launches again; the warning says so once per decoder."""
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
        adapter = self._adapter
        assert adapter is not None
        key = (adapter.batch_size, nb, span)
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
        copies; rounds only write cache rows past the committed lengths, so K/V caches need none
        (linear-attention states are advanced in place: they are copied too)."""
        rnd = self._round
        assert rnd is not None
        mutable = [*rnd.state.mutable(), rnd.adapter.cache.base_len]
        mutable += rnd.adapter.cache.linear.tensors()
        if rnd.stream is not None:
            mutable += rnd.stream.tensors()
        for cache in (rnd.dcache, rnd.vcache):
            if cache is not None:
                mutable.append(cache.lengths)
        saved = [t.clone() for t in mutable]
        for _ in range(self.warmup):
            self._draft_select(span, nb)
            self._verify_commit(nb)
            for t, s in zip(mutable, saved, strict=True):
                t.copy_(s)

    # The tree-size choice, one round late (policy "auto" replaces these three).
    def _picker(self) -> Any:
        """A fresh chooser of tree-size buckets for one call."""
        return BucketPicker(self.buckets, self.start_bucket)

    def _choose(self, picker: Any, r: int, context_bound: int) -> int:
        """Round r's tree-size bucket N (``context_bound``: an upper bound on the longest
        committed length before it)."""
        return int(picker.launch(r))

    def _observe(self, picker: Any, r: int, live: list[list[int]]) -> int:
        """Round r's status rows of the requests active in it (read one round late); returns 1
        if its largest tree filled a bucket below the largest, else 0."""
        nodes = max((row[STATUS.NODES] for row in live), default=1)
        return int(picker.observe(r, nodes))

    def _stage(self, r: int) -> None:
        """Queue the copy of round r's status into pinned slot r % 2 (no wait)."""
        rnd = self._round
        assert rnd is not None
        num_b = rnd.batch_size
        self._pinned[num_b][r % 2].copy_(rnd.state.status, non_blocking=self.device.type == "cuda")
        if self._events[num_b]:
            self._events[num_b][r % 2].record()

    def _read(self, r: int) -> list[list[int]]:
        """Round r's staged status, one row per request (waits for round r only)."""
        rnd = self._round
        assert rnd is not None
        num_b = rnd.batch_size
        if self._events[num_b]:
            self._events[num_b][r % 2].synchronize()
        return [[int(v) for v in row] for row in self._pinned[num_b][r % 2].tolist()]

    def _rounds(
        self,
        rnd: Round,
        request: GenerateRequest,
        per: list[GenerationStats],
        stats: GenerationStats,
        timer: PhaseTimer,
    ) -> list[int]:
        """Launch rounds until the device reports every request done; the host books round
        r - 1 while round r runs."""
        st, adapter = rnd.state, rnd.adapter
        lengths, caps = request.lengths, request.caps
        act = [not bool(d) for d in st.done.tolist()]  # setup read (before any round)
        gen = [1] * len(lengths)
        if not any(act):
            return gen
        round_timer = PhaseTimer(stats, self.device, synchronize=False)
        known_round = 0  # the host's latest status: after prefill
        picker = self._picker()
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
                span = span_bucket(start_ub + self.block_size, rnd.span_cap, self.span_min)
                self._run_round(span, self._choose(picker, r, start_ub), round_timer)
                self._stage(r)
                if self.on_round is not None:
                    self.on_round(r)
                if r == 1:
                    continue
                with round_timer.phase("host"):
                    status = self._read(r - 1)
                    live = [row for b, row in enumerate(status) if act[b]]
                    self.filled_rounds += self._observe(picker, r - 1, live)
                    for b, row in enumerate(status):
                        if act[b]:
                            act[b] = not self._book(row, per[b], b, request.streamer)
                        gen[b] = row[STATUS.GEN]
                known_round = r - 1
                if not any(act):
                    break  # round r was launched after the end: a no-op on every output
        finally:
            adapter.cache.set_fixed_span(None)
        return gen


class _CaptureFailed(Exception):
    """A CUDA graph capture raised (carries the original error)."""

    def __init__(self, error: RuntimeError) -> None:
        super().__init__(str(error))
        self.error = error


class BucketPicker:
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
