"""The decision logic of ``policy="auto"`` (DESIGN.md §8): per round, draft or not, and which
tree size, to maximise expected tokens per second. Pure Python, deterministic, no torch.

Vocabulary: N tree size in nodes, root included (N = 1 is a plain target step, no draft; N >= 2
is draft + verify of an N-node tree), "context" the committed length T before the round.

A round of mode N yields ``1 + E[accepted]`` tokens (a target step: 1) in ``E[seconds]``:

- :class:`CostModel` estimates the seconds per (N, context bucket) online, from the rounds run;
- :class:`AcceptanceModel` estimates E[accepted] per tree bucket, from the draft surrogate's
  prediction times an online calibration factor, or from the accepted lengths observed;
- :class:`AutoController` makes the two choices of a round from them and re-probes the mode it
  is not using, with an exponential backoff, so that a change of regime is noticed.

Every estimate is an EWMA whose n-th sample has weight ``max(alpha, 1/n)``: the running mean
over the first ``1/alpha`` samples (so the first sample does not dominate), then a plain EWMA.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["AcceptanceModel", "AutoController", "AutoSettings", "CostModel"]

#: Relative margin under which two rates count as tied (float noise, not a real difference).
_TIE = 1e-9

#: A cost table: ``(nodes, context_len) -> seconds`` or None where it has no entry.
CostSeed = Callable[[int, int], float | None]


def _int(name: str, value: Any, low: int) -> int:
    """``value`` as an int >= ``low``, else a ValueError naming ``name``."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    try:
        out = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}") from None
    if out < low:
        raise ValueError(f"{name} must be an int >= {low}, got {out}")
    return out


def _real(name: str, value: Any, low: float = 0.0, strict: bool = False) -> float:
    """``value`` as a finite float >= ``low`` (> ``low`` if ``strict``), else a ValueError."""
    bound = f"> {low}" if strict else f">= {low}"
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}") from None
    if not math.isfinite(out) or out < low or (strict and out == low):
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
    return out


@dataclass(frozen=True)
class AutoSettings:
    """Tuning of the auto controller.

    Attributes:
        alpha: EWMA weight of a new observation (round costs, acceptance, calibration), in (0, 1].
        probe_every: rounds of the mode in use between re-probes of the other one, initially
            (>= 1). Also the freshness window of the draft decision: a tree bucket's observed
            acceptance counts only if it ran in the last ``max(probe_every, 2)`` drafted rounds.
        backoff: factor (>= 1) on the probe interval after a probe that did not win.
        max_probe_every: cap of the probe interval (>= probe_every).
        warmup_rounds: rounds of each of {target step, largest bucket, smallest bucket} measured
            at the start (>= 0), skipped for a mode whose cost a seed table gives.
        context_buckets: ascending upper bounds (inclusive) of the context buckets of the cost
            model; a context above the last bound falls in one more, open-ended bucket.

    Raises:
        ValueError: a setting out of range (the message names it).
    """

    alpha: float = 0.1
    probe_every: int = 4
    backoff: float = 2.0
    max_probe_every: int = 256
    warmup_rounds: int = 2
    context_buckets: tuple[int, ...] = (256, 1024, 4096, 16384, 65536)

    def __post_init__(self) -> None:
        alpha = _real("AutoSettings.alpha", self.alpha, 0.0, strict=True)
        if alpha > 1.0:
            raise ValueError(f"AutoSettings.alpha must be in (0, 1], got {self.alpha!r}")
        _int("AutoSettings.probe_every", self.probe_every, 1)
        _real("AutoSettings.backoff", self.backoff, 1.0)
        cap = _int("AutoSettings.max_probe_every", self.max_probe_every, 1)
        if cap < self.probe_every:
            raise ValueError(
                f"AutoSettings.max_probe_every ({cap}) must be >= probe_every ({self.probe_every})"
            )
        _int("AutoSettings.warmup_rounds", self.warmup_rounds, 0)
        bounds = self.context_buckets
        if not isinstance(bounds, tuple) or not bounds:
            raise ValueError(
                f"AutoSettings.context_buckets must be a non-empty tuple of ints, got {bounds!r}"
            )
        for i, b in enumerate(bounds):
            _int(f"AutoSettings.context_buckets[{i}]", b, 1)
        if any(b >= c for b, c in zip(bounds, bounds[1:])):
            raise ValueError(
                f"AutoSettings.context_buckets must be strictly ascending, got {bounds!r}"
            )

    def context_bucket(self, context_len: int) -> int:
        """Index (0..len(context_buckets)) of the context bucket holding ``context_len``."""
        for i, bound in enumerate(self.context_buckets):
            if context_len <= bound:
                return i
        return len(self.context_buckets)


class _Ewma:
    """Mean of a stream: weight ``max(alpha, 1/n)`` on the n-th sample."""

    __slots__ = ("alpha", "n", "value")

    def __init__(self, alpha: float) -> None:
        self.alpha = alpha
        self.n = 0
        self.value = 0.0

    def update(self, x: float) -> None:
        self.n += 1
        self.value += max(self.alpha, 1.0 / self.n) * (x - self.value)


class _WindowMedian:
    """Median of the last ``size`` samples: one slow round (a GC pause, preemption) cannot move
    a cost estimate, and a real change of cost takes over after ``size // 2 + 1`` rounds."""

    __slots__ = ("n", "samples", "size", "value")

    def __init__(self, size: int = 5) -> None:
        self.size = size
        self.n = 0
        self.samples: list[float] = []
        self.value = 0.0

    def update(self, x: float) -> None:
        self.n += 1
        self.samples.append(x)
        if len(self.samples) > self.size:
            self.samples.pop(0)
        ordered = sorted(self.samples)
        mid = len(ordered) // 2
        self.value = ordered[mid] if len(ordered) % 2 else 0.5 * (ordered[mid - 1] + ordered[mid])


def _nearest(keys: Sequence[int], key: int) -> int | None:
    """The element of ``keys`` nearest to ``key`` (ties: the smaller), None if empty."""
    best: int | None = None
    for k in sorted(keys):
        if best is None or abs(k - key) < abs(best - key):
            best = k
    return best


class CostModel:
    """Online wall-time estimate of a round per (mode nodes, context bucket): the median of the
    last observed seconds (robust to one slow round), seeded from an optional table
    ``seed(nodes, context_len) -> seconds | None``.

    ``nodes == 1`` means a plain target step (no draft); ``nodes >= 2`` a draft + verify of a
    tree of that many nodes (root included). :meth:`estimate` looks, in order, at the samples of
    (nodes, the context's bucket); else the samples of the nearest context bucket of the same
    nodes with any (ties: the shorter context), unscaled; else the seed. A seed is a fallback,
    not a prior: once a mode has a sample, its seed is not used.

    Args:
        settings: alpha and the context buckets.
        seed: the cost table, or None.
    """

    def __init__(self, settings: AutoSettings, seed: CostSeed | None = None) -> None:
        if not isinstance(settings, AutoSettings):
            raise ValueError(f"settings must be an AutoSettings, got {type(settings).__name__}")
        if seed is not None and not callable(seed):
            raise ValueError("seed must be callable (nodes, context_len) -> seconds | None")
        self.settings = settings
        self._seed = seed
        # nodes -> context bucket -> median of the last rounds
        self._samples: dict[int, dict[int, _WindowMedian]] = {}

    def seed_estimate(self, nodes: int, context_len: int) -> float | None:
        """The seed table's seconds for (nodes, context_len), None without one.

        Raises:
            ValueError: bad arguments, or the seed returned something that is not a positive
                finite number or None.
        """
        nodes = _int("nodes", nodes, 1)
        context_len = _int("context_len", context_len, 0)
        if self._seed is None:
            return None
        value = self._seed(nodes, context_len)
        if value is None:
            return None
        return _real(f"cost seed({nodes}, {context_len})", value, 0.0, strict=True)

    def estimate(self, nodes: int, context_len: int) -> float | None:
        """Expected seconds of a round of ``nodes`` at ``context_len``; None = never seen, no
        seed."""
        nodes = _int("nodes", nodes, 1)
        context_len = _int("context_len", context_len, 0)
        by_bucket = self._samples.get(nodes)
        if by_bucket:
            near = _nearest(list(by_bucket), self.settings.context_bucket(context_len))
            assert near is not None
            return by_bucket[near].value
        return self.seed_estimate(nodes, context_len)

    def observe(self, nodes: int, context_len: int, seconds: float) -> None:
        """Record a round of ``nodes`` at ``context_len`` that took ``seconds`` (> 0)."""
        nodes = _int("nodes", nodes, 1)
        context_len = _int("context_len", context_len, 0)
        seconds = _real("seconds", seconds, 0.0, strict=True)
        bucket = self.settings.context_bucket(context_len)
        est = self._samples.setdefault(nodes, {}).setdefault(bucket, _WindowMedian())
        est.update(seconds)


class AcceptanceModel:
    """Expected accepted draft tokens per round for a tree bucket: the surrogate's prediction
    (sum of the selected nodes' path probabilities, computed by the caller) times an online
    calibration factor per bucket (EWMA of observed / EWMA of predicted, over the rounds that
    came with a prediction), and, with no prediction, the EWMA of observed accepted lengths of
    that bucket (over all its rounds).

    A bucket's factor is 1.0 until it has run with a prediction: the surrogate is
    over-confident, so an untried bucket looks good and gets tried, which measures it.
    Expectations are clamped to [0, N - 1] (no round accepts more draft tokens than it has
    non-root nodes).

    Args:
        settings: alpha.
    """

    def __init__(self, settings: AutoSettings) -> None:
        if not isinstance(settings, AutoSettings):
            raise ValueError(f"settings must be an AutoSettings, got {type(settings).__name__}")
        self.settings = settings
        self._accepted: dict[int, _Ewma] = {}  # every round of the bucket
        self._cal_obs: dict[int, _Ewma] = {}  # rounds with a prediction: observed...
        self._cal_pred: dict[int, _Ewma] = {}  # ...and predicted

    def calibration(self, nodes: int) -> float:
        """Factor applied to the surrogate's prediction for bucket ``nodes``: EWMA of observed
        over EWMA of predicted, over its rounds with a prediction; 1.0 until there is one (or
        while every prediction was 0: no ratio to take)."""
        nodes = _int("nodes", nodes, 2)
        pred = self._cal_pred.get(nodes)
        if pred is None or pred.value <= 0.0:
            return 1.0
        return self._cal_obs[nodes].value / pred.value

    def expected(self, nodes: int, predicted: float | None) -> float | None:
        """E[accepted draft tokens] of a round of bucket ``nodes``: the calibrated prediction,
        or without one the observed EWMA (None if the bucket never ran)."""
        nodes = _int("nodes", nodes, 2)
        if predicted is not None:
            predicted = _real("predicted", predicted)
            value = predicted * self.calibration(nodes)
        else:
            ewma = self._accepted.get(nodes)
            if ewma is None:
                return None
            value = ewma.value
        return min(max(value, 0.0), float(nodes - 1))

    def observe(self, nodes: int, accepted: float, predicted: float | None) -> None:
        """Record a round of bucket ``nodes`` that accepted ``accepted`` draft tokens (a float:
        a batch's mean), with the surrogate's ``predicted`` for it (None if not computed)."""
        nodes = _int("nodes", nodes, 2)
        accepted = _real("accepted", accepted)
        if accepted > nodes - 1:
            raise ValueError(f"accepted ({accepted}) exceeds the tree's {nodes - 1} draft nodes")
        alpha = self.settings.alpha
        self._accepted.setdefault(nodes, _Ewma(alpha)).update(accepted)
        if predicted is not None:
            predicted = _real("predicted", predicted)
            self._cal_obs.setdefault(nodes, _Ewma(alpha)).update(accepted)
            self._cal_pred.setdefault(nodes, _Ewma(alpha)).update(predicted)


def _fill_costs(buckets: Sequence[int], costs: list[float | None]) -> list[float | None]:
    """Costs of all buckets from the known ones, linear in N.

    Between two known buckets: the line through them. Above the largest known: the line
    through the two largest known, never below the largest known cost (a bigger tree is not
    cheaper). Below the smallest known (N0, c0): the line through the two smallest known, never
    below c0 * N / N0 (cost = fixed + per-node * N with fixed >= 0 bounds it so). With one known
    bucket, every other bucket gets its cost (flat: optimistic for bigger trees, so one gets
    measured). None everywhere if none is known.
    """
    known = [(n, c) for n, c in zip(buckets, costs) if c is not None]
    if not known:
        return list(costs)
    out: list[float | None] = []
    for n, c in zip(buckets, costs):
        if c is not None:
            out.append(c)
            continue
        if len(known) == 1:
            out.append(known[0][1])
            continue
        lower = [(k, v) for k, v in known if k < n]
        upper = [(k, v) for k, v in known if k > n]
        if lower and upper:
            (n0, c0), (n1, c1) = lower[-1], upper[0]
            out.append(c0 + (c1 - c0) * (n - n0) / (n1 - n0))
        elif lower:  # above the largest known
            (n0, c0), (n1, c1) = known[-2], known[-1]
            out.append(max(c1 + (c1 - c0) * (n - n1) / (n1 - n0), c1))
        else:  # below the smallest known
            (n0, c0), (n1, c1) = known[0], known[1]
            out.append(max(c0 + (c1 - c0) * (n - n0) / (n1 - n0), c0 * n / n0))
    return out


class AutoController:
    """Per round: draft or not (before drafting, from recent rounds), then which tree bucket
    (after drafting, from the calibrated surrogate), maximising expected tokens per second
    ``(1 + E[accepted]) / E[round seconds]``; a plain target step yields 1 token. Re-probes the
    mode it is not using with exponential backoff so a change of regime is noticed.

    The rules, in the order :meth:`choose_draft` applies them:

    1. Warm-up: each of {largest bucket, smallest bucket, target step} runs ``warmup_rounds``
       times, interleaved in that order, unless the cost seed gives its cost at this context.
    2. A mode whose rate is unknown is measured: no drafted round with an acceptance yet ->
       draft; no cost for the step -> a step.
    3. Otherwise the regime (drafting or not) is the mode of the better rate; the drafted rate
       is the best over the *fresh* buckets (run in the last ``max(probe_every, 2)`` drafted
       rounds) of ``(1 + observed EWMA acceptance) / cost``, so a bucket the surrogate stopped
       picking does not keep drafting on with a stale acceptance. Ties: drafting. Entering a
       regime resets both probe intervals to ``probe_every``.
    4. After ``interval`` rounds of the regime (as scheduled here), the other mode runs once
       (a probe). If its rate
       then beats the regime's, the regime switches (and the interval resets); else the
       interval is multiplied by ``backoff``, capped at ``max_probe_every``.

    :meth:`choose_nodes` is the argmax over buckets of ``(1 + E[accepted]) / cost`` (see
    :meth:`choose_nodes`), except that a pending warm-up bucket is returned first.

    Deterministic: the choices are a function of the sequence of calls only (no clock, no
    random), so a replayed sequence of rounds makes the same choices in graph and eager mode.
    One controller serves one batch size (costs differ with B).

    Args:
        buckets: the tree sizes N available (ascending, each >= 2).
        settings: the tuning (default :class:`AutoSettings`).
        cost_seed: the cost table ``(nodes, context_len) -> seconds | None``, or None.

    Raises:
        ValueError: bad buckets or settings.
    """

    def __init__(
        self,
        buckets: Sequence[int],
        settings: AutoSettings | None = None,
        cost_seed: CostSeed | None = None,
    ) -> None:
        if isinstance(buckets, (str, bytes)) or not isinstance(buckets, Sequence):
            raise ValueError(f"buckets must be a sequence of ints >= 2, got {buckets!r}")
        if not buckets:
            raise ValueError("buckets must hold at least one tree size")
        sizes = tuple(_int(f"buckets[{i}]", b, 2) for i, b in enumerate(buckets))
        if any(a >= b for a, b in zip(sizes, sizes[1:])):
            raise ValueError(f"buckets must be strictly ascending, got {list(sizes)}")
        if settings is None:
            settings = AutoSettings()
        if not isinstance(settings, AutoSettings):
            raise ValueError(f"settings must be an AutoSettings, got {type(settings).__name__}")
        self.buckets: tuple[int, ...] = sizes
        self.settings = settings
        self.cost = CostModel(settings, cost_seed)
        self.acceptance = AcceptanceModel(settings)
        self._counts: dict[int, int] = dict.fromkeys((1, *sizes), 0)
        # Warm-up order: the two ends of the tree sizes (for the cost line), then the step.
        self._warmup_modes: tuple[int, ...] = tuple(dict.fromkeys((sizes[-1], sizes[0], 1)))
        self._drafting: bool | None = None  # the regime; None until the first decision
        self._since_probe = 0  # rounds of the regime scheduled since it was entered or probed
        self._interval = {True: float(settings.probe_every), False: float(settings.probe_every)}
        self._drafted_rounds = 0
        self._last_run: dict[int, int] = {}  # bucket -> index of its last drafted round

    # -- read-only views ----------------------------------------------------------------------

    @property
    def counts(self) -> dict[int, int]:
        """Rounds observed per mode (1 = target step, else the bucket), every mode listed."""
        return dict(self._counts)

    @property
    def drafting(self) -> bool | None:
        """The current regime (True: drafting), None before the first decision after warm-up."""
        return self._drafting

    def probe_interval(self, draft: bool) -> float:
        """Rounds of the other mode between probes of the drafting (``draft=True``) or step
        mode."""
        return self._interval[bool(draft)]

    # -- estimates ----------------------------------------------------------------------------

    def _check_nodes(self, nodes: Any) -> int:
        nodes = _int("nodes", nodes, 1)
        if nodes != 1 and nodes not in self.buckets:
            raise ValueError(f"nodes must be 1 (a target step) or one of {list(self.buckets)}, "
                             f"got {nodes}")  # fmt: skip
        return nodes

    def _costs(self, context_len: int) -> list[float | None]:
        """Estimated seconds per bucket at ``context_len``, unknown ones filled linearly in N."""
        known = [self.cost.estimate(n, context_len) for n in self.buckets]
        return _fill_costs(self.buckets, known)

    def expected_rate(
        self, nodes: int, context_len: int, predicted: float | None = None
    ) -> float | None:
        """Expected tokens per second of a round of ``nodes`` (1 = target step) at
        ``context_len``: ``(1 + E[accepted]) / cost``, E[accepted] from ``predicted`` (calibrated)
        or else the bucket's observed acceptance; the cost measured, seeded or (for a bucket)
        interpolated. None if the cost or the acceptance is unknown."""
        nodes = self._check_nodes(nodes)
        context_len = _int("context_len", context_len, 0)
        if nodes == 1:
            if predicted is not None:
                raise ValueError("a target step (nodes=1) has no predicted acceptance")
            cost = self.cost.estimate(1, context_len)
            return None if cost is None else 1.0 / cost
        cost = self._costs(context_len)[self.buckets.index(nodes)]
        accepted = self.acceptance.expected(nodes, predicted)
        if cost is None or accepted is None:
            return None
        return (1.0 + accepted) / cost

    def _draft_rate(self, context_len: int) -> float | None:
        """Best expected rate over the fresh buckets from their observed acceptance."""
        window = max(self.settings.probe_every, 2)
        best: float | None = None
        for n in self.buckets:
            last = self._last_run.get(n)
            if last is None or self._drafted_rounds - last >= window:
                continue
            rate = self.expected_rate(n, context_len)
            if rate is not None and (best is None or rate > best * (1.0 + _TIE)):
                best = rate
        return best

    def _prefer_draft(self, context_len: int) -> bool | None:
        """Whether drafting's rate is at least the step's; None if either is unknown."""
        draft = self._draft_rate(context_len)
        step = self.expected_rate(1, context_len)
        if draft is None or step is None:
            return None
        return draft * (1.0 + _TIE) >= step

    def _warmup(self, context_len: int, drafted_only: bool) -> int | None:
        """The next warm-up mode (fewest rounds so far, ties in warm-up order), None if done."""
        best: int | None = None
        for mode in self._warmup_modes:
            if drafted_only and mode == 1:
                continue
            if self._counts[mode] >= self.settings.warmup_rounds:
                continue
            if self.cost.seed_estimate(mode, context_len) is not None:
                continue
            if best is None or self._counts[mode] < self._counts[best]:
                best = mode
        return best

    def restart_probes(self) -> None:
        """Probe intervals back to ``probe_every`` (costs, acceptance and calibration kept):
        for a caller that keeps the controller across requests and expects a new request may
        be a new regime."""
        self._since_probe = 0
        self._interval = dict.fromkeys((True, False), float(self.settings.probe_every))

    def _enter(self, drafting: bool) -> None:
        """Switch the regime; both probe intervals restart at ``probe_every``."""
        self._drafting = drafting
        self.restart_probes()

    # -- choices ------------------------------------------------------------------------------

    def choose_draft(self, context_len: int) -> bool:
        """Whether the next round drafts (True) or is a plain target step (False).

        Call it once per round: it counts the rounds it schedules, so the probes keep their
        spacing when :meth:`observe` comes a round late (graph mode reads a round's status
        during the next one).
        """
        context_len = _int("context_len", context_len, 0)
        warm = self._warmup(context_len, drafted_only=False)
        if warm is not None:
            return warm != 1
        prefer = self._prefer_draft(context_len)
        if prefer is None:  # measure what is missing
            return self._draft_rate(context_len) is None
        if prefer != self._drafting:
            self._enter(prefer)
        if self._since_probe >= self._interval[not prefer]:
            self._since_probe = 0
            return not prefer  # a scheduled re-probe of the other mode
        self._since_probe += 1
        return prefer

    def choose_nodes(self, context_len: int, predicted: Sequence[float | None]) -> int:
        """The bucket to verify this (drafted) round.

        The argmax over buckets b of ``(1 + E_b) / C_b``, E_b the calibrated ``predicted[b]``
        (or the bucket's observed acceptance where that is None; a bucket never observed gets
        the nearest larger observed bucket's, an optimistic bound), C_b the bucket's cost at this
        context: measured, else borrowed from the nearest context bucket, else seeded, else
        linear in N from the buckets whose cost is known (interpolated between the two known
        neighbours; beyond them the end segment extended, floored so that cost stays >= 0
        fixed + per node; one known bucket: its cost for all). Ties (within 1e-9 relative): the
        smaller bucket. Buckets whose rate is unknown are skipped; if every one is, the
        smallest. A pending warm-up bucket comes first (largest, then smallest).

        Args:
            context_len: committed length before the round.
            predicted: ``[len(buckets)]`` surrogate E[accepted] per bucket (None: unknown).
        """
        context_len = _int("context_len", context_len, 0)
        if isinstance(predicted, (str, bytes)) or not isinstance(predicted, Sequence):
            raise ValueError(f"predicted must be a sequence of len(buckets), got {predicted!r}")
        if len(predicted) != len(self.buckets):
            raise ValueError(
                f"predicted has {len(predicted)} entries, expected one per bucket "
                f"({len(self.buckets)})"
            )
        preds = [None if p is None else _real(f"predicted[{i}]", p) for i, p in
                 enumerate(predicted)]  # fmt: skip
        warm = self._warmup(context_len, drafted_only=True)
        if warm is not None:
            return warm
        costs = self._costs(context_len)
        best, best_rate = self.buckets[0], None
        for n, cost, pred, guess in zip(self.buckets, costs, preds, self._untried_guesses()):
            accepted = self.acceptance.expected(n, pred)
            if accepted is None:
                accepted = guess
            if cost is None or accepted is None:
                continue
            rate = (1.0 + accepted) / cost
            if best_rate is None or rate > best_rate * (1.0 + _TIE):
                best, best_rate = n, rate
        return best

    def _untried_guesses(self) -> list[float | None]:
        """Per bucket, an optimistic acceptance for a bucket never observed: the nearest larger
        observed bucket's (best-first trees are nested, so a smaller tree accepts at most what a
        larger one does) — so a bucket between two measured ones gets tried once, which measures
        it; None above the largest observed one."""
        seen = [self.acceptance.expected(n, None) for n in self.buckets]
        out: list[float | None] = []
        for i in range(len(self.buckets)):
            larger = [v for v in seen[i + 1 :] if v is not None]
            out.append(None if not larger else min(larger[0], float(self.buckets[i] - 1)))
        return out

    def observe(
        self,
        nodes: int,
        context_len: int,
        seconds: float,
        accepted: float,
        predicted: float | None = None,
    ) -> None:
        """Record a round that ran.

        Args:
            nodes: 1 for a target step (``accepted`` must be 0), else the bucket that ran.
            context_len: committed length before the round (as given to the choices).
            seconds: the round's wall time (> 0).
            accepted: accepted draft tokens (a batch's mean may be fractional).
            predicted: the surrogate's E[accepted] for the bucket that ran, if computed.
        """
        nodes = self._check_nodes(nodes)
        context_len = _int("context_len", context_len, 0)
        seconds = _real("seconds", seconds, 0.0, strict=True)
        accepted = _real("accepted", accepted)
        if nodes == 1 and (accepted != 0 or predicted is not None):
            raise ValueError(
                "a target step (nodes=1) accepts no draft tokens and has no prediction, "
                f"got accepted={accepted}, predicted={predicted!r}"
            )
        if nodes > 1:
            self.acceptance.observe(nodes, accepted, predicted)
            self._drafted_rounds += 1
            self._last_run[nodes] = self._drafted_rounds
        self.cost.observe(nodes, context_len, seconds)
        self._counts[nodes] += 1
        if self._drafting is None:
            return  # warm-up or still measuring: no regime yet
        drafted = nodes > 1
        if drafted == self._drafting:
            return
        # A round of the mode not in use: a probe. Did it win?
        if self._prefer_draft(context_len) == drafted:
            self._enter(drafted)
        else:
            grown = self._interval[drafted] * self.settings.backoff
            self._interval[drafted] = min(grown, float(self.settings.max_probe_every))
