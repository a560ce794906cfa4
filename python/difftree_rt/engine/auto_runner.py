"""The eager launcher of ``policy="auto"``: every round decides whether to draft, and which tree
size to verify, from measured round times and observed acceptance (DESIGN.md §8).

Vocabulary: B batch, N tree size (root included; 1 = a plain target step).

Per round: (1) before drafting, :meth:`AutoController.choose_draft` from recent rounds; a round
that does not draft verifies the one-node tree of the bonus token — a plain target step — and
keeps the committed rows' target features aside (:class:`DeferredContext`): the drafter's
context catches up on them in one append when drafting resumes; (2) after drafting,
the largest tree's node scores give each size bucket's expected accepted length (the draft
surrogate) and :meth:`AutoController.choose_nodes` picks the bucket; a smaller bucket's tree is
built again at that size. The round's wall time and accepted length go back to the controller.
Every mode is lossless, so the choice changes only the speed.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from ..policies.auto import AutoPolicy
from .auto import AutoController, AutoSettings
from .round import STATUS, HostView, Round
from .runner import EagerRunner, GraphRunner, RoundPool
from .stats import PhaseTimer

__all__ = ["AutoGraphRunner", "AutoRunner", "DeferredContext"]

#: Committed rows kept aside while the target runs alone, before one catch-up append.
DEFER_ROWS = 64


class DeferredContext:
    """Committed rows' target features not yet in the drafter's context: ``[B, C + 1, F]`` (the
    last row takes the padding writes) and ``[B]`` counts on the device, plus the host's bound
    on the largest count (exact: the eager launcher knows every round's accepted lengths).

    Args:
        rnd: the round whose drafter caches the rows go to.
        capacity: C, rows kept before a forced catch-up.
    """

    def __init__(self, rnd: Round, capacity: int = DEFER_ROWS) -> None:
        st = rnd.state
        num_b, feat = st.new_feat.shape[0], st.new_feat.shape[2]
        self.rnd = rnd
        self.capacity = capacity
        self.feats = st.new_feat.new_zeros((num_b, capacity + 1, feat))
        self.counts = torch.zeros(num_b, dtype=torch.long, device=st.new_feat.device)
        self.rows = 0

    def reset(self) -> None:
        self.counts.zero_()
        self.rows = 0

    def defer(self, pending_rows: int) -> None:
        """Move the last round's accepted rows (``new_feat[:, :num_new]``; ``pending_rows`` >=
        max ``num_new``) aside, catching up first when they would not fit."""
        if pending_rows + self.rows > self.capacity:
            self.flush()
        st = self.rnd.state
        j = torch.arange(pending_rows, device=self.counts.device)[None, :]
        dest = torch.where(j < st.num_new[:, None], self.counts[:, None] + j, self.capacity)
        index = dest[:, :, None].expand(-1, -1, self.feats.shape[2])
        self.feats.scatter_(1, index, st.new_feat[:, :pending_rows])
        self.counts.add_(st.num_new)
        st.num_new.zero_()
        self.rows += pending_rows

    def flush(self) -> None:
        """Append the rows kept aside to the drafter caches (one append per cache)."""
        if self.rows == 0:
            return
        self.rnd.append_rows(self.feats[:, : self.rows], self.counts)
        self.reset()


class AutoRunner(EagerRunner):
    """:class:`EagerRunner` whose rounds choose their mode (one controller per batch size,
    kept across calls so measured costs carry over).

    Args:
        pool: the decoder's :class:`RoundPool` (its policy an :class:`AutoPolicy`).
        profile: as :class:`EagerRunner`.
        settings: the controllers' settings.
    """

    def __init__(
        self, pool: RoundPool, profile: bool = True, settings: AutoSettings | None = None
    ) -> None:
        super().__init__(pool, profile)
        if not isinstance(self.policy, AutoPolicy):
            raise TypeError(f"AutoRunner needs an AutoPolicy, got {type(self.policy).__name__}")
        self.auto: AutoPolicy = self.policy
        self.buckets = self.auto.size_buckets(self.path_cols - 1)
        self.settings = settings
        self.controllers: dict[int, AutoController] = {}
        self.deferred: dict[int, DeferredContext] = {}
        #: The current call's rounds per mode (N; 1 = target step), for its stats.
        self.modes: dict[int, int] = {}

    def controller(self, batch_size: int) -> AutoController:
        """The controller of batch size B (created on first use)."""
        ctrl = self.controllers.get(batch_size)
        if ctrl is None:
            ctrl = AutoController(self.buckets, self.settings)
            self.controllers[batch_size] = ctrl
        return ctrl

    def generate(self, adapter, right, request, per, stats):  # type: ignore[no-untyped-def]
        """:meth:`EagerRunner.generate`, recording the call's rounds per mode in ``stats``."""
        self.modes = {}
        rnd = self.pool.get(adapter)
        deferred = self.deferred.get(id(rnd))
        if deferred is None or deferred.rnd is not rnd:
            deferred = self.deferred[id(rnd)] = DeferredContext(rnd)
        deferred.reset()  # setup() appends the prompt's rows directly
        # A new call may be a new regime (another prompt, another context length): probe the
        # mode not in use again soon, keeping every measurement.
        self.controller(adapter.batch_size).restart_probes()
        out = super().generate(adapter, right, request, per, stats)
        stats.modes = dict(self.modes)
        return out

    def _step(self, rnd: Round, span: int, host: HostView, timer: PhaseTimer) -> None:
        ctrl = self.controller(rnd.batch_size)
        context = rnd.adapter.cache.len_bound  # exact: the launcher synced it for this round
        start = time.perf_counter()
        predicted = None
        deferred = self.deferred[id(rnd)]
        if not ctrl.choose_draft(context):
            nodes = 1
            deferred.defer(host.pending_rows)
            tree = rnd.root_tree()
        else:
            with timer.phase("draft"):
                deferred.flush()
                inputs = rnd.draft(span, None, host)
            with timer.phase("select"):
                tree = rnd.select(inputs)
                guesses = self.auto.predicted(tree)
                nodes = ctrl.choose_nodes(context, guesses)
                predicted = guesses[self.buckets.index(nodes)]
                if nodes != self.buckets[-1]:
                    inputs.max_nodes = nodes - 1
                    tree = rnd.select(inputs)
        self._verify_commit_tree(rnd, tree, timer)
        st = rnd.state
        # The launcher reads this round's status next anyway; reading the accepted lengths here
        # (one small read) ends the round's wall time.
        live = ~st.done | (st.status[:, STATUS.NEMIT] > 0)
        accepted = st.status[:, STATUS.ACC].to(torch.float32)[live]
        mean_acc = float(accepted.mean()) if accepted.numel() else 0.0
        ctrl.observe(nodes, context, time.perf_counter() - start, mean_acc, predicted)
        self.modes[nodes] = self.modes.get(nodes, 0) + 1


class _RoundClock:
    """Wall time of graph-mode rounds without a sync: on the CPU the round has run when
    :meth:`stop` returns; on a GPU a pair of CUDA events per round, read when the host reads
    that round's status anyway (one round late)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self._marks: dict[int, Any] = {}

    def start(self, r: int) -> None:
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            self._marks[r] = ev
        else:
            self._marks[r] = time.perf_counter()

    def stop(self, r: int) -> None:
        begin = self._marks.get(r)
        if begin is None:
            return
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self._marks[r] = (begin, end)
        else:
            self._marks[r] = time.perf_counter() - begin

    def seconds(self, r: int) -> float | None:
        """Round r's wall time (its status must have been read), forgotten afterwards."""
        mark = self._marks.pop(r, None)
        if mark is None:
            return None
        if self.cuda:
            begin, end = mark
            return max(float(begin.elapsed_time(end)) / 1e3, 1e-9)
        return max(float(mark), 1e-9)


class AutoGraphRunner(GraphRunner):
    """:class:`GraphRunner` whose rounds choose their mode: a target step (N = 1: the drafter's
    context appends the last round's rows, then the one-node tree of the bonus token is
    verified) or a tree of one of the policy's size buckets, each its own pair of captured
    graphs. The choice for round r is made when it is launched, from what the host knows then:
    rounds up to r - 2 (the status of round r - 1 is read while round r runs), their wall times
    measured without a sync (:class:`_RoundClock`). The size bucket comes from each bucket's
    observed acceptance (no mid-round read of the draft scores, unlike the eager launcher).

    Args:
        pool: the decoder's :class:`RoundPool` (its policy an :class:`AutoPolicy`).
        capture: as :class:`GraphRunner`.
        settings: the controllers' settings.
    """

    def __init__(
        self, pool: RoundPool, *, capture: bool = True, settings: AutoSettings | None = None
    ) -> None:
        super().__init__(pool, capture=capture)
        if not isinstance(self.policy, AutoPolicy):
            raise TypeError(
                f"AutoGraphRunner needs an AutoPolicy, got {type(self.policy).__name__}"
            )
        self.auto: AutoPolicy = self.policy
        self.sizes = self.auto.size_buckets(self.path_cols - 1)
        self.buckets = sorted({1, *self.buckets})
        self.settings = settings
        self.controllers: dict[int, AutoController] = {}
        #: The current call's rounds per mode (N; 1 = target step), for its stats.
        self.modes: dict[int, int] = {}
        self._clock = _RoundClock(self.device)
        self._launched: dict[int, tuple[int, int]] = {}  # round -> (N, context bound)
        self._current = 0  # the round being launched

    def controller(self, batch_size: int) -> AutoController:
        """The controller of batch size B (created on first use)."""
        ctrl = self.controllers.get(batch_size)
        if ctrl is None:
            ctrl = AutoController(self.sizes, self.settings)
            self.controllers[batch_size] = ctrl
        return ctrl

    def generate(self, adapter, right, request, per, stats):  # type: ignore[no-untyped-def]
        """:meth:`GraphRunner.generate`, recording the call's rounds per mode in ``stats``."""
        self.modes = {}
        self._launched.clear()
        self.controller(adapter.batch_size).restart_probes()
        out = super().generate(adapter, right, request, per, stats)
        stats.modes = dict(self.modes)
        return out

    def _draft_select(self, span: int, nb: int) -> None:
        if nb != 1:
            super()._draft_select(span, nb)
            return
        rnd = self._round
        assert rnd is not None
        rnd.append_pending()  # the drafter keeps up while the target runs alone
        rnd.root_tree()

    def _run_round(self, span: int, nb: int, timer: PhaseTimer) -> None:
        r = self._current
        self._clock.start(r)
        super()._run_round(span, nb, timer)
        self._clock.stop(r)

    def _picker(self) -> Any:
        rnd = self._round
        assert rnd is not None
        return self.controller(rnd.batch_size)

    def _choose(self, picker: Any, r: int, context_bound: int) -> int:
        ctrl: AutoController = picker
        nodes = 1
        if ctrl.choose_draft(context_bound):
            nodes = ctrl.choose_nodes(context_bound, [None] * len(self.sizes))
        self._launched[r] = (nodes, context_bound)
        self._current = r
        self.modes[nodes] = self.modes.get(nodes, 0) + 1
        return nodes

    def _observe(self, picker: Any, r: int, live: list[list[int]]) -> int:
        ctrl: AutoController = picker
        nodes, context = self._launched.pop(r, (0, 0))
        seconds = self._clock.seconds(r)
        if nodes == 0 or seconds is None or not live:
            return 0
        accepted = 0.0 if nodes == 1 else sum(row[STATUS.ACC] for row in live) / len(live)
        ctrl.observe(nodes, context, seconds, accepted)
        return 0
