"""The CUDA tree-attention kernel as the model path's backend.

:func:`enable` installs :func:`cuda_tree_attention_backend` with
:func:`difftree_rt.models.tree_attention.set_tree_attention_backend`; from then on every layer's
:func:`~difftree_rt.models.tree_attention.tree_attention` runs the kernel when its tensors are on a
CUDA device. Importing this module has no side effect (the default backend stays ``None``); the
engine / target adapter calls :func:`enable` when the target lives on CUDA. The layer's attention
variant (sliding window by position, attention sinks, ring caches) runs in the kernel too. The
backend declines (returns ``None``, so the PyTorch reference runs) for CPU tensors, float32, head
dims (D_k, D_v) other than (64, 64), (128, 128) and (192, 128) (DeepSeek-V3 / Kimi latent
attention as transformers expands it), mixed dtypes or devices, or a build without CUDA kernels.
:func:`disable` removes it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import ops
from .tree_attention import get_tree_attention_backend, set_tree_attention_backend

__all__ = ["cuda_tree_attention_backend", "disable", "enable"]

_SUPPORTED_DTYPES = (torch.bfloat16, torch.float16)
#: (D_k, D_v) pairs the kernel is compiled for.
_SUPPORTED_DIMS = ((64, 64), (128, 128), (192, 128))


def _cuda_kernels_built() -> bool:
    try:
        from .._ext import ext

        return bool(ext().build_info()["cuda_compiled"])
    except ImportError:
        return False


_HAS_KERNELS: bool | None = None


def _aligned(t: Tensor) -> bool:
    """16-byte aligned rows, as the kernel's vector loads need."""
    # Under torch.compile (compile=True) no pointer exists at trace time: the byte offset into
    # the allocation (whose start the allocators align to >= 16 bytes) decides instead.
    compiling = torch.compiler.is_compiling()
    start = t.storage_offset() * t.element_size() if compiling else t.data_ptr()
    if t.stride(-1) != 1 or start % 16 != 0:
        return False
    return all(s % 8 == 0 for d, s in enumerate(t.stride()[:-1]) if t.shape[d] > 1)


def cuda_tree_attention_backend(
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
) -> Tensor | None:
    """:class:`~difftree_rt.models.tree_attention.TreeAttentionBackend` running the CUDA kernel.

    Same arguments and result as :func:`~difftree_rt.models.tree_attention.tree_attention`;
    ``tree_anc=None`` means causal (chain) rows, served by the kernel's chain path. The variant
    goes to :func:`difftree_rt.ops.tree_attention` as is (``depth [B, N]`` only with a window;
    ``sinks [H_q]`` as float32: a model's bf16 ``s_aux`` is cast, a 64-element copy).
    """
    global _HAS_KERNELS
    if not q.is_cuda or q.dtype not in _SUPPORTED_DTYPES:
        return None
    if (q.shape[-1], v_cache.shape[-1]) not in _SUPPORTED_DIMS or k_cache.shape[-1] != q.shape[-1]:
        return None
    if k_cache.dtype != q.dtype or v_cache.dtype != q.dtype:
        return None
    if _HAS_KERNELS is None:
        _HAS_KERNELS = _cuda_kernels_built()
    if not _HAS_KERNELS:
        return None
    if not _aligned(q):
        q = q.contiguous()
    if not _aligned(k_cache):
        k_cache = k_cache.contiguous()
    if not _aligned(v_cache):
        v_cache = v_cache.contiguous()
    window = int(window or 0)
    if window <= 0:
        depth = None  # positions matter only to a window
    for t in (prefix_len, tree_anc, num_nodes, depth, sinks):
        if t is not None and t.device != q.device:
            return None  # host tensors would need a copy per layer: let the reference run
    if sinks is not None and sinks.dtype != torch.float32:
        sinks = sinks.float()
    return ops.tree_attention(
        q,
        k_cache,
        v_cache,
        prefix_len,
        tree_anc,
        num_nodes,
        float(scale),
        is_chain=tree_anc is None,
        depth=depth,
        window=window,
        sinks=sinks,
        ring=bool(ring),
    )


def enable() -> None:
    """Install the CUDA backend (idempotent)."""
    set_tree_attention_backend(cuda_tree_attention_backend)


def disable() -> None:
    """Remove the CUDA backend if it is the installed one (the reference then runs)."""
    if get_tree_attention_backend() is cuda_tree_attention_backend:
        set_tree_attention_backend(None)
