"""Per-generation statistics: accepted lengths, τ, rounds and time per phase.

τ (ALGORITHMS.md notation) = accepted draft tokens + 1 per round (the bonus counts), averaged
over rounds. For the "ar" baseline every step is a round with τ = 1.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

__all__ = ["PHASES", "GenerationStats", "PhaseTimer"]

#: Phases of one round (DESIGN.md §3), plus the one-off prefill.
PHASES = ("prefill", "draft", "select", "verify", "accept", "commit", "host")


@dataclass
class GenerationStats:
    """What one ``generate`` call did.

    Attributes:
        policy: policy name ("ar", "chain", "ddtree", ...).
        budget: draft nodes per round (0 for "ar").
        prompt_len: T of the prompt.
        new_tokens: tokens emitted after the prompt (<= max_new_tokens).
        accepted_lengths: per round, accepted draft tokens (0..L).
        emitted_per_round: per round, tokens emitted (accepted + bonus, cut by stop/max).
        phase_time: seconds per phase (keys of :data:`PHASES`).
        total_time: wall-clock seconds of the whole call (prefill included).
        stopped: a stop token ended the sequence.
        batch_size: requests generated together (1 for a solo call). For a batch (B > 1) the
            call's aggregate stats pool the requests: ``prompt_len`` and ``new_tokens`` are
            sums, ``accepted_lengths``/``emitted_per_round`` hold every (request, round) pair
            (request-major), so ``tau`` is the mean over them and ``rounds`` counts them;
            ``stopped`` means every request ended on a stop token. Per-request stats are in
            ``GenerationOutput.request_stats``.
        batch_rounds: for a batch, the rounds the batch ran (target verify forwards, the
            longest request's rounds); 0 for a solo call. ``ms_per_round`` divides by it.
        modes: ``policy="auto"``: the call's rounds per mode, keyed by the verified tree size N
            (1: a plain target step, no draft); empty for fixed policies.
        compile_time: seconds this call spent compiling model forwards (``compile=True``: the
            first round of each new static shape; included in the phase times).
    """

    policy: str
    budget: int
    prompt_len: int = 0
    new_tokens: int = 0
    accepted_lengths: list[int] = field(default_factory=list)
    emitted_per_round: list[int] = field(default_factory=list)
    phase_time: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))
    total_time: float = 0.0
    stopped: bool = False
    batch_size: int = 1
    batch_rounds: int = 0
    modes: dict[int, int] = field(default_factory=dict)
    compile_time: float = 0.0

    @property
    def rounds(self) -> int:
        return len(self.accepted_lengths)

    @property
    def tau(self) -> float:
        """Mean accepted draft tokens + 1 per round (0.0 before any round)."""
        if not self.accepted_lengths:
            return 0.0
        return 1.0 + sum(self.accepted_lengths) / len(self.accepted_lengths)

    @property
    def decode_time(self) -> float:
        """Seconds spent after prefill."""
        return self.total_time - self.phase_time.get("prefill", 0.0)

    @property
    def tokens_per_second(self) -> float:
        """New tokens per second of the whole call (prefill included)."""
        return self.new_tokens / self.total_time if self.total_time > 0 else 0.0

    @property
    def ms_per_round(self) -> float:
        rounds = self.batch_rounds or self.rounds
        return 1e3 * self.decode_time / rounds if rounds else 0.0

    def as_dict(self) -> dict[str, object]:
        """JSON-friendly summary (lists included)."""
        return {
            "policy": self.policy,
            "budget": self.budget,
            "prompt_len": self.prompt_len,
            "new_tokens": self.new_tokens,
            "rounds": self.rounds,
            "tau": self.tau,
            "tokens_per_second": self.tokens_per_second,
            "ms_per_round": self.ms_per_round,
            "total_time_s": self.total_time,
            "phase_time_s": dict(self.phase_time),
            "accepted_lengths": list(self.accepted_lengths),
            "stopped": self.stopped,
            "batch_size": self.batch_size,
            "batch_rounds": self.batch_rounds,
            "modes": {str(k): v for k, v in sorted(self.modes.items())},
        }


class PhaseTimer:
    """Adds wall-clock time per phase into a :class:`GenerationStats`.

    On CUDA with ``synchronize=True`` every phase boundary waits for the device so that the
    time lands in the phase that queued the work (a profiling mode: the syncs themselves cost
    time). Without it, asynchronous work is billed to whichever phase next waits for it
    (on this eager path: the host phase).
    """

    def __init__(self, stats: GenerationStats, device: torch.device, synchronize: bool) -> None:
        self.stats = stats
        self._sync = synchronize and device.type == "cuda"
        self._device = device

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if self._sync:
            torch.cuda.synchronize(self._device)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if self._sync:
                torch.cuda.synchronize(self._device)
            self.stats.phase_time[name] += time.perf_counter() - t0
