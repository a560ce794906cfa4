"""Gated-DeltaNet tree ops: a linear-attention layer (Qwen3.5 / Qwen3-Next) verifying a draft
tree and committing its accepted path (cpu/gated_delta.cpp: the fp32 oracle;
cuda/gated_delta.cu: the kernels). Semantics: :mod:`difftree_rt.reference.gated_delta`.

Vocabulary: B batch, N rows (tree nodes, parent < child; or causal rows), C conv channels, K conv
width, H_k / H_v key / value heads (H_v a multiple of H_k), D_k / D_v head dims, P path columns.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .._ext import dl, dl_opt, ext, require_tensor, require_tensors, stream_of
from ._custom import custom_op

__all__ = ["gdn_commit", "gdn_conv", "gdn_conv_commit", "gdn_verify"]


# ---- gdn_conv ---------------------------------------------------------------------------------


def _gdn_conv_fake(
    x: Tensor, conv_tail: Tensor, weight: Tensor, bias: Optional[Tensor], src: Tensor,
    activation: bool,
) -> Tensor:  # fmt: skip
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@custom_op("gdn_conv", fake=_gdn_conv_fake)
def _gdn_conv(
    x: Tensor, conv_tail: Tensor, weight: Tensor, bias: Optional[Tensor], src: Tensor,
    activation: bool,
) -> Tensor:  # fmt: skip
    C = ext()
    C.check_gdn_conv(dl(x), dl(conv_tail), dl(weight), dl_opt(bias), dl(src))
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    C.gdn_conv(
        dl(x), dl(conv_tail), dl(weight), dl_opt(bias), dl(src), activation, dl(out), stream_of(x)
    )
    return out


def gdn_conv(
    x: Tensor,
    conv_tail: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    src: Tensor,
    activation: bool = True,
) -> Tensor:
    """Depthwise causal conv along each row's path (+ SiLU when ``activation``), fp32 inside.

    ``y[b, i, c] = act(bias[c] + sum_e weight[c, K - 1 - e] * seq[b, src[b, i, e], c])`` with
    ``seq = [conv_tail^T; x]`` (the K - 1 committed rows, then the forward's N rows).

    Args:
        x: ``[B, N, C]`` pre-conv rows, float32/float16/bfloat16 (contiguous).
        conv_tail: ``[B, C, K - 1]`` committed tail, x's dtype.
        weight: ``[C, K]``; bias: ``[C]`` or None; x's dtype.
        src: ``[B, N, K]`` int32 from :func:`difftree_rt.reference.gated_delta.conv_sources`,
            entries in ``[0, K - 1 + N)``.
        activation: apply SiLU.

    Returns:
        ``[B, N, C]`` in x's dtype.
    """
    require_tensors(x=x, conv_tail=conv_tail, weight=weight, src=src, bias=bias, optional=("bias",))
    return _gdn_conv(x, conv_tail, weight, bias, src, bool(activation))


# ---- gdn_conv_commit --------------------------------------------------------------------------


def _gdn_conv_commit_fake(
    conv_tail: Tensor, x: Tensor, src: Tensor, path: Tensor, accepted: Tensor,
    active: Optional[Tensor],
) -> None:  # fmt: skip
    return None


@custom_op("gdn_conv_commit", fake=_gdn_conv_commit_fake, mutates_args=("conv_tail",))
def _gdn_conv_commit(
    conv_tail: Tensor, x: Tensor, src: Tensor, path: Tensor, accepted: Tensor,
    active: Optional[Tensor],
) -> None:  # fmt: skip
    ext().gdn_conv_commit(
        dl(conv_tail), dl(x), dl(src), dl(path), dl(accepted), dl_opt(active), stream_of(x)
    )


def gdn_conv_commit(
    conv_tail: Tensor,
    x: Tensor,
    src: Tensor,
    path: Tensor,
    accepted: Tensor,
    active: Tensor | None = None,
) -> None:
    """In place: the conv tail after the accepted path, ``tail[b, :, K - 2 - e] =
    seq[b, src[b, last, e]]`` for ``e < K - 1``, ``last = path[b, accepted[b]]``.

    Args:
        conv_tail: ``[B, C, K - 1]``, updated for requests with ``active[b]`` (all when None).
        x, src: the verify forward's pre-conv rows and sources (as :func:`gdn_conv`).
        path: ``[B, P]`` int32/int64 node ids (``path[:, 0] = 0``, strictly increasing up to
            accepted, entries < N); accepted: ``[B]`` int32/int64 in ``[0, P - 1]``.
        active: ``[B]`` bool, or None (every request).
    """
    require_tensors(
        conv_tail=conv_tail, x=x, src=src, path=path, accepted=accepted, active=active,
        optional=("active",),
    )  # fmt: skip
    _gdn_conv_commit(conv_tail, x, src, path, accepted, active)


# ---- gdn_verify -------------------------------------------------------------------------------


def _gdn_verify_outputs(
    q: Tensor, k: Tensor, v: Tensor, g: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    f32 = torch.float32
    return (
        q.new_empty(v.shape),
        k.new_empty(k.shape, dtype=f32),
        v.new_empty(v.shape, dtype=f32),
        g.new_empty(g.shape, dtype=f32),
    )


def _gdn_verify_fake(
    q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, state: Tensor,
    tree_anc: Optional[Tensor],
) -> tuple[Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    return _gdn_verify_outputs(q, k, v, g)


@custom_op("gdn_verify", fake=_gdn_verify_fake)
def _gdn_verify(
    q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, state: Tensor,
    tree_anc: Optional[Tensor],
) -> tuple[Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    C = ext()
    inputs = (dl(q), dl(k), dl(v), dl(g), dl(beta), dl(state), dl_opt(tree_anc))
    C.check_gdn_verify(*inputs)  # before the outputs' shapes are read from the inputs
    out, k_hat, delta, gcum = _gdn_verify_outputs(q, k, v, g)
    C.gdn_verify(*inputs, dl(out), dl(k_hat), dl(delta), dl(gcum), stream_of(q))
    return out, k_hat, delta, gcum


def gdn_verify(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    beta: Tensor,
    state: Tensor,
    tree_anc: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The gated delta rule of every row along its own root-to-row path, from the committed state.

    With ``q̂ = l2norm(q) / sqrt(D_k)``, ``k̂ = l2norm(k)`` (fp32) and row i's parent p (its
    largest strict ancestor; ``S_-1`` = ``state``)::

        δ_i = β_i (v_i - (e^{g_i} S_p)^T k̂_i)        S_i = e^{g_i} S_p + k̂_i δ_i^T
        o_i = S_i^T q̂_i                              G_i = G_p + g_i

    computed without per-node states (the ancestor-masked forward substitution).

    Args:
        q, k: ``[B, N, H_k, D_k]``; v: ``[B, N, H_v, D_v]``; one dtype (f32/f16/bf16).
        g: ``[B, N, H_v]`` float32 log decay; beta: ``[B, N, H_v]`` float32.
        state: ``[B, H_v, D_k, D_v]`` float32 committed state (not modified).
        tree_anc: ``[B, N, ceil(N/32)]`` int32 ancestor-or-self bitmask (uint32 is viewed), or
            None (causal rows).

    Returns:
        ``(out [B, N, H_v, D_v] in q's dtype, k_hat [B, N, H_k, D_k], delta [B, N, H_v, D_v],
        gcum [B, N, H_v])``, the last three float32 (what :func:`gdn_commit` needs).
    """
    require_tensors(q=q, k=k, v=v, g=g, beta=beta, state=state)
    if tree_anc is not None:
        require_tensor(tree_anc, "tree_anc")
        if tree_anc.dtype == torch.uint32:
            tree_anc = tree_anc.view(torch.int32)
    return _gdn_verify(q, k, v, g, beta, state, tree_anc)


# ---- gdn_commit -------------------------------------------------------------------------------


def _gdn_commit_fake(
    state: Tensor, k_hat: Tensor, delta: Tensor, gcum: Tensor, path: Tensor, accepted: Tensor,
    active: Optional[Tensor],
) -> None:  # fmt: skip
    return None


@custom_op("gdn_commit", fake=_gdn_commit_fake, mutates_args=("state",))
def _gdn_commit(
    state: Tensor, k_hat: Tensor, delta: Tensor, gcum: Tensor, path: Tensor, accepted: Tensor,
    active: Optional[Tensor],
) -> None:  # fmt: skip
    ext().gdn_commit(
        dl(state), dl(k_hat), dl(delta), dl(gcum), dl(path), dl(accepted), dl_opt(active),
        stream_of(state),
    )  # fmt: skip


def gdn_commit(
    state: Tensor,
    k_hat: Tensor,
    delta: Tensor,
    gcum: Tensor,
    path: Tensor,
    accepted: Tensor,
    active: Tensor | None = None,
) -> None:
    """In place: the state after the accepted path, from :func:`gdn_verify`'s outputs::

        S <- e^{G_last} S + sum_{j = 0..accepted} e^{G_last - G_{path_j}} k̂_{path_j} δ_{path_j}^T

    with ``last = path[b, accepted[b]]``.

    Args:
        state: ``[B, H_v, D_k, D_v]`` float32, updated for requests with ``active[b]``.
        k_hat, delta, gcum: from :func:`gdn_verify`.
        path: ``[B, P]`` int32/int64 (``path[:, 0] = 0``, strictly increasing up to accepted,
            entries < N); accepted: ``[B]`` int32/int64 in ``[0, P - 1]``.
        active: ``[B]`` bool, or None (every request).
    """
    require_tensors(
        state=state, k_hat=k_hat, delta=delta, gcum=gcum, path=path, accepted=accepted,
        active=active, optional=("active",),
    )  # fmt: skip
    _gdn_commit(state, k_hat, delta, gcum, path, accepted, active)
