"""Compiled model forwards (``torch.compile``, inductor) for graph mode's static shapes.

Vocabulary: B batch, T rows of one target forward (N tree nodes, 1 for a step), S drafter
block size, n appended drafter rows.

Graph mode (``engine/runner.py``) runs every round on static buffers whose shapes are host
constants: B, the tree-size bucket N, the key span. Each such shape gets its own compiled
function (``dynamic=False``, ``fullgraph=True``: a graph break is a compile failure, never a
silent split), compiled on first use and reused by every later round of that shape. Inductor's
own CUDA graphs stay off (``mode="default"`` or ``"max-autotune-no-cudagraphs"``): the runner
captures the whole round itself.

Dynamo keeps its compiled frames per *code object*, with a small limit per object
(``torch._dynamo.config.recompile_limit``). Every shape key therefore compiles its own copy of
a one-line trampoline (:func:`_trampoline`): one frame per key, so keys never evict each other
and any second compile under one key is a real recompile (tests count them).

A compile that fails (an unsupported op, a graph break, a missing compiler) turns compilation
off for the whole decoder (:class:`CompileState`) with one ``RuntimeWarning``; the call that
failed and every later one run the same forward uncompiled. That is lossless: the failed call
wrote nothing (tracing runs on fake tensors), the eager call then runs it for real.
"""

from __future__ import annotations

import time
import types
import warnings
from collections.abc import Callable, Hashable
from typing import Any

import torch

__all__ = ["COMPILE_MODES", "CompileState", "ForwardCompiler"]

#: Inductor modes that leave CUDA graphs to the runner.
COMPILE_MODES = ("default", "max-autotune-no-cudagraphs")


def _trampoline(fn: Callable[..., Any], *args: Any) -> Any:
    return fn(*args)


def _own_copy(fn: types.FunctionType) -> types.FunctionType:
    """``fn`` with a code object of its own (dynamo's cache lives on the code object)."""
    return types.FunctionType(
        fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__
    )


class CompileState:
    """One decoder's compilation switch and bookkeeping (shared by all its rounds).

    Args:
        mode: inductor mode, one of :data:`COMPILE_MODES`.

    Attributes:
        enabled: False after a failed compile (everything then runs uncompiled).
        compile_seconds: wall seconds of the first calls (trace + compile + one run) so far.
        compiled: shape keys compiled so far.
        error: the failure that turned compilation off, if any.
    """

    def __init__(self, mode: str = "default", backend: str = "inductor") -> None:
        if mode not in COMPILE_MODES:
            raise ValueError(f"compile_mode must be one of {COMPILE_MODES}, got {mode!r}")
        self.mode = mode
        #: torch.compile backend ("aot_eager" traces and functionalises exactly as inductor
        #: does, without code generation: tests use it where inductor's compile time is not
        #: what they check).
        self.backend = backend
        self.enabled = True
        self.compile_seconds = 0.0
        self.compiled = 0
        self.error: BaseException | None = None

    def fail(self, err: BaseException) -> None:
        """Turn compilation off for good, with one warning."""
        self.enabled = False
        self.error = err
        msg = str(err).strip().splitlines()[0] if str(err).strip() else ""
        warnings.warn(
            f"compiled forwards: torch.compile failed ({type(err).__name__}: {msg[:300]}); this "
            "decoder now runs its model forwards uncompiled (same tokens, slower). "
            "SpeculativeDecoder(compile=False) skips compilation.",
            RuntimeWarning,
            stacklevel=2,
        )


class ForwardCompiler:
    """Compiled forwards of one round (one target adapter, its drafter caches), by shape key.

    Args:
        state: the decoder's :class:`CompileState`.
    """

    def __init__(self, state: CompileState) -> None:
        self.state = state
        self._fns: dict[Hashable, Callable[..., Any]] = {}

    @property
    def keys(self) -> list[Hashable]:
        """Shape keys compiled by this round (in order)."""
        return list(self._fns)

    def call(self, key: Hashable, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)``, compiled for ``key`` (every call under one key must have the same
        shapes, dtypes and host values); uncompiled once compilation is off."""
        state = self.state
        if not state.enabled:
            return fn(*args)
        compiled = self._fns.get(key)
        if compiled is not None:
            return compiled(fn, *args)
        options: dict[str, Any] = {"fullgraph": True, "dynamic": False}
        if state.backend == "inductor":
            options["mode"] = state.mode
        compiled = torch.compile(_own_copy(_trampoline), backend=state.backend, **options)
        start = time.perf_counter()
        try:
            out = compiled(fn, *args)
        except Exception as err:  # any failure to compile: fall back, once per decoder
            state.fail(err)
            return fn(*args)
        state.compile_seconds += time.perf_counter() - start
        state.compiled += 1
        self._fns[key] = compiled
        return out
