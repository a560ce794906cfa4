"""Offline policy evaluation: record per-round traces once (draft candidates + the target's
choices over a large verified tree), then score any policy and budget on the identical rounds
without re-running the target."""

from __future__ import annotations

from .offline import EvalRow, evaluate, format_table
from .trace import Trace, TraceRecorder, TraceRound

__all__ = ["EvalRow", "Trace", "TraceRecorder", "TraceRound", "evaluate", "format_table"]
