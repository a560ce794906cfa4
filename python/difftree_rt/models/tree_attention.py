"""Tree attention over a static KV cache, and its transformers ``AttentionInterface`` entry.

Vocabulary: B batch, N query rows (tree nodes, or new tokens for causal prefill/decode),
H_q query heads, H_kv key/value heads (H_q a multiple of H_kv: GQA), D_k / D_v key / value head
dims, S cache slots (S_max rows, or a sliding layer's ring), W sliding window.

Visibility for query row i of request b (written at cache row ``prefix_len[b] + i``):
  * every committed row ``[0, prefix_len[b])`` (with a window W: those less than W positions
    before the row's own position ``prefix_len[b] + depth[i]``);
  * tree row j (cache row ``prefix_len[b] + j``) iff bit j of ``tree_anc[b, i]`` is set
    (j is i or an ancestor of i), or, with ``tree_anc=None``, iff j <= i (causal: prefill, AR
    decode, chain verification) — and, with a window, j's depth is within W of i's.
A layer's attention sinks (gpt-oss) add one term per head to the softmax denominator.

No ``[N, context]`` mask is ever built: the prefix part only needs a per-request key-length test
and the tree part an ``[N, N]`` mask; both score blocks share one softmax.

Seam for the CUDA kernel: :func:`tree_attention` is the single function every layer calls. A
backend installed with :func:`set_tree_attention_backend` gets the same arguments first and may
decline (return ``None``, e.g. for CPU tensors); otherwise the PyTorch reference
(:func:`difftree_rt.reference.attention.tree_attention_reference`) runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor

from ..reference.attention import anc_to_mask, tree_attention_reference

__all__ = [
    "DIFFTREE_ATTN_IMPL",
    "TreeAttentionBackend",
    "TreeAttentionContext",
    "get_tree_attention_backend",
    "hf_tree_attention_forward",
    "register_hf_attention",
    "set_tree_attention_backend",
    "tree_attention",
]

#: Name under which the attention function is registered with transformers.
DIFFTREE_ATTN_IMPL = "difftree_tree"


class TreeAttentionBackend(Protocol):
    """Signature of an accelerated implementation (the CUDA kernel will be one).

    Returns ``[B, H_q, N, D_v]`` or ``None`` to decline (the reference then runs).
    """

    def __call__(
        self,
        q: Tensor,
        k_cache: Tensor,
        v_cache: Tensor,
        prefix_len: Tensor,
        tree_anc: Tensor | None,
        num_nodes: Tensor | None,
        scale: float,
        *,
        depth: Tensor | None = None,
        window: int = 0,
        sinks: Tensor | None = None,
        ring: bool = False,
    ) -> Tensor | None: ...


_BACKEND: TreeAttentionBackend | None = None


def set_tree_attention_backend(backend: TreeAttentionBackend | None) -> None:
    """Install (``None``: remove) the accelerated implementation tried before the reference."""
    global _BACKEND
    _BACKEND = backend


def get_tree_attention_backend() -> TreeAttentionBackend | None:
    """The installed accelerated implementation, if any."""
    return _BACKEND


def tree_attention(
    q: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
    prefix_len: Tensor,
    tree_anc: Tensor | None,
    num_nodes: Tensor | None,
    scale: float,
    *,
    kv_bound: int | None = None,
    tree_mask: Tensor | None = None,
    depth: Tensor | None = None,
    window: int = 0,
    sinks: Tensor | None = None,
    ring: bool = False,
) -> Tensor:
    """Attention of N new rows over the committed prefix + the tree (see module docstring).

    The one function boundary where the CUDA kernel plugs in: an installed backend is tried
    first with ``(q, k_cache, v_cache, prefix_len, tree_anc, num_nodes, scale)`` and the layer's
    variant (``depth``, ``window``, ``sinks``, ``ring``; all per-round values are device
    tensors, so it is graph-safe); ``kv_bound`` and ``tree_mask`` are hints for the reference
    only.

    Shapes: ``q [B, H_q, N, D_k]``, ``k_cache [B, H_kv, S, D_k]``, ``v_cache [B, H_kv, S, D_v]``,
    ``prefix_len [B]``, ``tree_anc [B, N, ceil(N/32)]`` or ``None`` (causal), ``num_nodes [B]``
    or ``None``, ``depth [B, N]`` or ``None`` (causal rows), ``sinks [H_q]`` or ``None``.
    Returns ``[B, H_q, N, D_v]``.
    """
    backend = _BACKEND
    if backend is not None:
        out = backend(
            q, k_cache, v_cache, prefix_len, tree_anc, num_nodes, scale,
            depth=depth, window=window, sinks=sinks, ring=ring,
        )  # fmt: skip
        if out is not None:
            return out
    return tree_attention_reference(
        q,
        k_cache,
        v_cache,
        prefix_len,
        tree_anc,
        num_nodes,
        scale,
        kv_bound=kv_bound,
        tree_mask=tree_mask,
        depth=depth,
        window=window,
        sinks=sinks,
        ring=ring,
    )


@dataclass
class TreeAttentionContext:
    """Per-forward state handed to every layer's attention (through HF's attention ``**kwargs``).

    Attributes:
        prefix_len: ``[B]`` int64, committed rows (the new rows are written right after them).
        tree_anc: ``[B, N, ceil(N/32)]`` ancestor bitmask, or ``None`` for causal new rows.
        num_nodes: ``[B]`` valid tree nodes, or ``None``.
        depth: ``[B, N]`` int64 depth of each tree node, or ``None`` for causal rows.
        kv_bound: host upper bound on ``max(prefix_len)`` (reference-path hint).
        full_rows: S_max: a layer whose key buffer has fewer slots is a ring.
        num_rows: T, the rows the forward writes. A causal layer may get only the last of them
            as queries (Gemma-4 skips the other prompt rows in its KV-sharing layers): the rows
            before them then count as committed.
        commit_rows: ``[B]`` rows each request commits in this forward (causal prefill and
            decode: linear-attention layers advance their states as they go), or None for a
            verify forward (nothing committed until ``TargetAdapter.commit``).
        extras: per-forward values shared by every layer (e.g. the conv sources of the rows).
    """

    prefix_len: Tensor
    tree_anc: Tensor | None = None
    num_nodes: Tensor | None = None
    depth: Tensor | None = None
    kv_bound: int | None = None
    full_rows: int | None = None
    num_rows: int | None = None
    commit_rows: Tensor | None = None
    extras: dict[Any, Any] = field(default_factory=dict, repr=False)
    _tree_mask: Tensor | None = field(default=None, repr=False)

    def tree_mask(self, num_rows: int) -> Tensor | None:
        """``[B, N, N]`` bool mask unpacked once per forward and shared by all layers."""
        if self.tree_anc is None:
            return None
        if self._tree_mask is None or self._tree_mask.shape[-1] != num_rows:
            self._tree_mask = anc_to_mask(self.tree_anc, num_rows)
        return self._tree_mask


#: Keyword under which the context travels through HF's ``**kwargs`` down to attention.
CONTEXT_KWARG = "difftree_ctx"

# Attention kwargs whose semantics the tree attention does not implement.
_UNSUPPORTED_KWARGS = ("softcap",)


def hf_tree_attention_forward(
    module: torch.nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[Tensor, None]:
    """transformers attention-function entry (registered as ``"difftree_tree"``).

    ``query [B, H_q, N, D_k]``; ``key``/``value`` are the whole static-cache layer buffers
    ``[B, H_kv, S, D_k / D_v]`` returned by ``StaticKVCache.update`` (or their per-head
    expansion: latent attention). ``attention_mask`` is ignored (visibility comes from the
    context, the layer's ``sliding_window`` and its sinks ``s_aux``, the kwargs transformers
    passes to every attention implementation). Returns ``([B, N, H_q, D_v], None)`` like HF's
    SDPA path.
    """
    ctx = kwargs.get(CONTEXT_KWARG)
    if not isinstance(ctx, TreeAttentionContext):
        raise RuntimeError(
            f"attention implementation {DIFFTREE_ATTN_IMPL!r} needs a TreeAttentionContext in the "
            f"{CONTEXT_KWARG!r} kwarg; call the model through TargetAdapter"
        )
    for name in _UNSUPPORTED_KWARGS:
        if kwargs.get(name) is not None:
            raise ValueError(
                f"{type(module).__name__} passes {name!r} to attention, which tree attention does "
                "not implement"
            )
    if query.shape[1] % key.shape[1] != 0:
        raise ValueError(
            f"query heads H_q={query.shape[1]} are not a multiple of key/value heads "
            f"H_kv={key.shape[1]}"
        )
    scale = float(scaling) if scaling is not None else query.shape[-1] ** -0.5
    window = kwargs.get("sliding_window") or 0
    sinks = kwargs.get("s_aux")
    if sinks is None:
        sinks = kwargs.get("sinks")
    prefix_len, kv_bound = ctx.prefix_len, ctx.kv_bound
    skipped = 0 if ctx.num_rows is None else ctx.num_rows - query.shape[2]
    if skipped:
        if skipped < 0 or ctx.tree_anc is not None:
            raise RuntimeError(
                f"{type(module).__name__}: {query.shape[2]} query rows for a forward of "
                f"{ctx.num_rows} rows (only causal rows may be skipped)"
            )
        prefix_len = prefix_len + skipped
        kv_bound = None if kv_bound is None else kv_bound + skipped
    ring = ctx.full_rows is not None and key.shape[2] < ctx.full_rows
    if ring and window <= 0:
        raise RuntimeError(
            f"{type(module).__name__}: a ring cache without a sliding window (layer "
            f"{getattr(module, 'layer_idx', '?')})"
        )
    out = tree_attention(
        query,
        key,
        value,
        prefix_len,
        ctx.tree_anc,
        ctx.num_nodes,
        scale,
        kv_bound=kv_bound,
        tree_mask=ctx.tree_mask(query.shape[2]),
        depth=ctx.depth,
        window=int(window),
        sinks=sinks,
        ring=ring,
    )
    return out.transpose(1, 2).contiguous(), None


_REGISTERED = False


def register_hf_attention() -> str:
    """Register :func:`hf_tree_attention_forward` with transformers (idempotent).

    Only the attention function is registered, no mask function: transformers then skips
    building any attention mask for this implementation.

    Returns:
        The implementation name to put in ``config._attn_implementation``.
    """
    global _REGISTERED
    if not _REGISTERED:
        from transformers import AttentionInterface

        register: Callable[[str, Callable[..., Any]], None] = AttentionInterface.register
        register(DIFFTREE_ATTN_IMPL, hf_tree_attention_forward)
        _REGISTERED = True
    return DIFFTREE_ATTN_IMPL
