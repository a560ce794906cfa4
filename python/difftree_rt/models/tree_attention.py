"""Tree attention over a static KV cache, and its transformers ``AttentionInterface`` entry.

Vocabulary: B batch, N query rows (tree nodes, or new tokens for causal prefill/decode),
H_q query heads, H_kv key/value heads (H_q a multiple of H_kv: GQA), D head dim, S_max cache rows.

Visibility for query row i of request b (written at cache row ``prefix_len[b] + i``):
  * every committed row ``[0, prefix_len[b])``, unmasked;
  * tree row j (cache row ``prefix_len[b] + j``) iff bit j of ``tree_anc[b, i]`` is set
    (j is i or an ancestor of i), or, with ``tree_anc=None``, iff j <= i (causal: prefill, AR
    decode, chain verification).

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

    Returns ``[B, H_q, N, D]`` or ``None`` to decline (the reference then runs).
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
) -> Tensor:
    """Attention of N new rows over the committed prefix + the tree (see module docstring).

    The one function boundary where the CUDA kernel plugs in: an installed backend is tried
    first with ``(q, k_cache, v_cache, prefix_len, tree_anc, num_nodes, scale)`` (all per-round
    values are device tensors, so it is graph-safe); ``kv_bound`` and ``tree_mask`` are hints for
    the reference only.

    Shapes: ``q [B, H_q, N, D]``, caches ``[B, H_kv, S_max, D]``, ``prefix_len [B]``,
    ``tree_anc [B, N, ceil(N/32)]`` or ``None`` (causal), ``num_nodes [B]`` or ``None``.
    Returns ``[B, H_q, N, D]``.
    """
    backend = _BACKEND
    if backend is not None:
        out = backend(q, k_cache, v_cache, prefix_len, tree_anc, num_nodes, scale)
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
    )


@dataclass
class TreeAttentionContext:
    """Per-forward state handed to every layer's attention (through HF's attention ``**kwargs``).

    Attributes:
        prefix_len: ``[B]`` int64, committed rows (the new rows are written right after them).
        tree_anc: ``[B, N, ceil(N/32)]`` ancestor bitmask, or ``None`` for causal new rows.
        num_nodes: ``[B]`` valid tree nodes, or ``None``.
        kv_bound: host upper bound on ``max(prefix_len)`` (reference-path hint).
    """

    prefix_len: Tensor
    tree_anc: Tensor | None = None
    num_nodes: Tensor | None = None
    kv_bound: int | None = None
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
_UNSUPPORTED_KWARGS = ("softcap", "s_aux", "sinks")


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

    ``query [B, H_q, N, D]``; ``key``/``value`` are the whole static-cache layer buffers
    ``[B, H_kv, S_max, D]`` returned by ``StaticKVCache.update``. ``attention_mask`` is ignored
    (visibility comes from the context). Returns ``([B, N, H_q, D], None)`` like HF's SDPA path.
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
    out = tree_attention(
        query,
        key,
        value,
        ctx.prefix_len,
        ctx.tree_anc,
        ctx.num_nodes,
        scale,
        kv_bound=ctx.kv_bound,
        tree_mask=ctx.tree_mask(query.shape[2]),
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
