"""The plumbing every op family shares: one helper that defines a ``torch.ops.difftree`` custom
op together with its fake implementation and its dispatch, and the outputs several ops share
(CUDA scratch, draft-tree arrays)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, Optional, TypeVar, cast

import torch
from torch import Tensor

from ..tree import anc_words

F = TypeVar("F", bound=Callable[..., Any])

TREE_FIELDS = (
    "token",
    "parent",
    "depth",
    "score",
    "first_child",
    "next_sibling",
    "anc",
    "num_nodes",
)
TreeArrays = tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]


def custom_op(
    name: str, *, fake: Callable[..., Any], mutates_args: Sequence[str] = ()
) -> Callable[[F], F]:
    """Register the decorated function as ``torch.ops.difftree.<name>`` (schema inferred from its
    annotations) with ``fake`` as its fake implementation (same parameters; output shapes only).

    The decorator returns the callable the public wrappers use: the registered op while tracing,
    so torch.compile sees it, and the undecorated function in eager mode, where the dispatcher
    adds ~10 µs per call and nothing else.
    """

    def define(impl: F) -> F:
        op = torch.library.custom_op(f"difftree::{name}", impl, mutates_args=tuple(mutates_args))
        op.register_fake(fake)
        registered = getattr(torch.ops.difftree, name)
        eager = getattr(op, "_init_fn", None)  # the undecorated function (torch >= 2.4)

        @functools.wraps(impl)
        def call(*args: Any) -> Any:
            if eager is None or torch.compiler.is_compiling():
                return registered(*args)
            return eager(*args)

        return cast(F, call)

    return define


def cuda_workspace(ref: Tensor, size: Callable[[], int]) -> Optional[Tensor]:
    """Scratch for a CUDA kernel: ``size()`` bytes (uint8) on ``ref``'s device; None on the CPU
    (no CPU path needs one, and ``size`` is not evaluated there) or when ``size()`` is 0."""
    if not ref.is_cuda:
        return None
    nbytes = int(size())
    return torch.empty(nbytes, dtype=torch.uint8, device=ref.device) if nbytes > 0 else None


def empty_tree(ref: Tensor, budget: int) -> TreeArrays:
    """Uninitialised draft-tree arrays (:data:`TREE_FIELDS` order) for ``B = ref.shape[0]``
    requests of capacity ``N = budget + 1`` on ``ref``'s device; real and fake tensors alike."""
    B, N = ref.shape[0], budget + 1

    def i32(*shape: int) -> Tensor:
        return ref.new_empty(shape, dtype=torch.int32)

    score = ref.new_empty((B, N), dtype=torch.float32)
    return (
        i32(B, N),
        i32(B, N),
        i32(B, N),
        score,
        i32(B, N),
        i32(B, N),
        i32(B, N, anc_words(N)),
        i32(B),
    )
