"""References of the Gated-DeltaNet tree ops (``difftree_rt.ops.gdn_*``): a linear-attention
layer (Qwen3.5 / Qwen3.6 / Qwen3-Next) verifying a draft tree and committing its accepted path.

Vocabulary: B batch, N rows of one forward (tree nodes, root first, parent < child; or causal
rows), C conv channels (``2 * H_k * D_k + H_v * D_v``), K conv kernel width, H_k / H_v key /
value heads (H_v a multiple of H_k: value head h reads key head ``h // (H_v / H_k)``), D_k / D_v
key / value head dims, P path columns.

Per request a layer keeps two states (ALGORITHMS.md "Gated-DeltaNet trees", DESIGN.md §7):
  * the conv tail ``[B, C, K - 1]``: the last K - 1 committed pre-conv rows (oldest first);
  * the recurrent state ``S [B, H_v, D_k, D_v]`` (fp32).

A node's row is what the model computes with its root-to-node path appended to the committed
context. Here each node's state is materialised from its parent's (readable, O(N D_k D_v)
memory per head); the C++ and CUDA ops compute the same values without per-node states (the
ancestor-masked forward substitution of docs/NOTES.md "Gated-DeltaNet trees").

Layering: torch only (tests/test_reference_layering.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "L2NORM_EPS",
    "conv_sources",
    "gdn_commit",
    "gdn_conv",
    "gdn_conv_commit",
    "gdn_verify",
    "parents_from_anc",
]

#: The epsilon of the fp32 l2 normalisation of q and k (transformers' ``l2norm``, FLA's kernel).
L2NORM_EPS = 1e-6


def parents_from_anc(tree_anc: Tensor | None, batch: int, rows: int, device: torch.device) -> Tensor:
    """``[B, N]`` int64 parent of each row (-1 for a root or a self-only padding row).

    The parent is the largest strict ancestor (ancestors of a node lie on its path, whose ids
    increase with depth); with ``tree_anc=None`` rows are causal (``parent[i] = i - 1``).
    """
    if tree_anc is None:
        return (torch.arange(rows, device=device) - 1).expand(batch, rows).clone()
    bits = torch.arange(rows, device=device)
    words = tree_anc[..., (bits // 32)].to(torch.int64) & 0xFFFFFFFF  # [B, N, N]
    mask = ((words >> (bits % 32)) & 1).bool()
    strict = mask & (bits[None, None, :] < bits[None, :, None])
    idx = torch.where(strict, bits[None, None, :], torch.full_like(bits, -1)[None, None, :])
    return idx.max(dim=-1).values


def conv_sources(parent: Tensor, kernel: int) -> Tensor:
    """``[B, N, K]`` int32: for row i and distance e (0 = itself), the index of its ancestor at
    distance e in the virtual sequence ``[conv tail (K - 1 rows); the forward's N rows]``.

    An ancestor above the root is the committed tail: row ``K - 1 + i`` for node i, tail slot
    ``K - 1 - (e - depth)`` past the root.
    """
    num_b, num_n = parent.shape
    cur = torch.arange(num_n, device=parent.device).expand(num_b, num_n)
    depth_over = torch.zeros_like(cur)  # steps already taken above the root
    cols = []
    for _ in range(kernel):
        above = depth_over > 0
        cols.append(torch.where(above, kernel - 1 - depth_over, kernel - 1 + cur))
        par = torch.gather(parent, 1, cur.clamp(min=0))
        step_up = (~above) & (par < 0)
        depth_over = torch.where(above | step_up, depth_over + 1, depth_over)
        cur = torch.where(above | step_up, cur, par)
    return torch.stack(cols, dim=-1).to(torch.int32)


def _seq(x: Tensor, conv_tail: Tensor) -> Tensor:
    """``[B, K - 1 + N, C]`` fp32: the committed tail then the forward's rows."""
    return torch.cat([conv_tail.transpose(1, 2).float(), x.float()], dim=1)


def gdn_conv(
    x: Tensor,
    conv_tail: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    src: Tensor,
    activation: bool = True,
) -> Tensor:
    """Depthwise causal conv along each row's path (+ SiLU when ``activation``).

    ``y[b, i, c] = act(bias[c] + sum_e weight[c, K - 1 - e] * seq[b, src[b, i, e], c])`` in fp32,
    stored in x's dtype (``seq`` as in :func:`conv_sources`).

    Args:
        x: ``[B, N, C]`` pre-conv rows.
        conv_tail: ``[B, C, K - 1]`` committed tail.
        weight: ``[C, K]``; bias: ``[C]`` or None.
        src: ``[B, N, K]`` from :func:`conv_sources`.

    Returns:
        ``[B, N, C]``.
    """
    seq = _seq(x, conv_tail)
    kernel = weight.shape[1]
    idx = src.long()
    out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    for e in range(kernel):
        rows = torch.gather(seq, 1, idx[:, :, e, None].expand(-1, -1, seq.shape[-1]))
        out = out + weight[:, kernel - 1 - e].float() * rows
    if bias is not None:
        out = out + bias.float()
    if activation:
        out = F.silu(out)
    return out.to(x.dtype)


def gdn_conv_commit(
    conv_tail: Tensor,
    x: Tensor,
    src: Tensor,
    path: Tensor,
    accepted: Tensor,
    active: Tensor | None = None,
) -> None:
    """In place: the tail after the accepted path, ``tail[b, :, K - 2 - e] = seq[b, src[b, last,
    e]]`` for ``e < K - 1`` with ``last = path[b, accepted[b]]`` (read before any write).

    Args:
        conv_tail: ``[B, C, K - 1]``, updated for requests with ``active[b]`` (all when None).
        x, src: the verify forward's pre-conv rows and sources (see :func:`gdn_conv`).
        path: ``[B, P]`` node ids; accepted: ``[B]``.
    """
    seq = _seq(x, conv_tail)
    num_b, _, km1 = conv_tail.shape
    for b in range(num_b):
        if active is not None and not bool(active[b]):
            continue
        last = int(path[b, int(accepted[b])])
        rows = [seq[b, int(src[b, last, e])] for e in range(km1)]
        for e in range(km1):
            conv_tail[b, :, km1 - 1 - e] = rows[e].to(conv_tail.dtype)


def _l2norm(t: Tensor) -> Tensor:
    return t * torch.rsqrt((t * t).sum(dim=-1, keepdim=True) + L2NORM_EPS)


def gdn_verify(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    beta: Tensor,
    state: Tensor,
    tree_anc: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The gated delta rule of every row along its own path, from the committed state.

    Along a path, with ``q̂ = l2norm(q) / sqrt(D_k)`` and ``k̂ = l2norm(k)`` (fp32), row i with
    parent p (state ``S_p``; ``S_-1`` = the committed state)::

        δ_i = β_i (v_i - (e^{g_i} S_p)^T k̂_i)        S_i = e^{g_i} S_p + k̂_i δ_i^T
        o_i = S_i^T q̂_i                              G_i = G_p + g_i  (G_-1 = 0)

    Args:
        q, k: ``[B, N, H_k, D_k]``; v: ``[B, N, H_v, D_v]``; g (log decay, <= 0), beta:
            ``[B, N, H_v]``; state: ``[B, H_v, D_k, D_v]`` fp32 (not modified).
        tree_anc: ``[B, N, ceil(N/32)]`` int32 ancestor-or-self bitmask, or None (causal rows).

    Returns:
        ``(out [B, N, H_v, D_v] in q's dtype, k_hat [B, N, H_k, D_k] fp32,
        delta [B, N, H_v, D_v] fp32, gcum [B, N, H_v] fp32)`` — the last three are what
        :func:`gdn_commit` needs.
    """
    num_b, num_n, h_k, d_k = k.shape
    h_v = v.shape[2]
    rep = h_v // h_k
    qh = _l2norm(q.float()) * d_k**-0.5
    kh = _l2norm(k.float())
    qv, kv = qh.repeat_interleave(rep, dim=2), kh.repeat_interleave(rep, dim=2)
    vf, gf, bf = v.float(), g.float(), beta.float()
    parent = parents_from_anc(tree_anc, num_b, num_n, q.device)
    out = torch.empty(v.shape, dtype=torch.float32, device=q.device)
    delta = torch.empty_like(out)
    gcum = torch.empty(g.shape, dtype=torch.float32, device=q.device)
    for b in range(num_b):
        states: list[Tensor] = []
        for i in range(num_n):
            p = int(parent[b, i])
            s_p = state[b].float() if p < 0 else states[p]
            gcum[b, i] = gf[b, i] + (gcum[b, p] if p >= 0 else 0.0)
            s = s_p * gf[b, i].exp()[:, None, None]
            kv_mem = (s * kv[b, i][:, :, None]).sum(dim=-2)
            d_i = (vf[b, i] - kv_mem) * bf[b, i][:, None]
            s = s + kv[b, i][:, :, None] * d_i[:, None, :]
            out[b, i] = (s * qv[b, i][:, :, None]).sum(dim=-2)
            delta[b, i] = d_i
            states.append(s)
    return out.to(q.dtype), kh, delta, gcum


def gdn_commit(
    state: Tensor,
    k_hat: Tensor,
    delta: Tensor,
    gcum: Tensor,
    path: Tensor,
    accepted: Tensor,
    active: Tensor | None = None,
) -> None:
    """In place: the state after the accepted path (from the verify's outputs, no new forward)::

        S <- e^{G_last} S + sum_{j = 0..accepted} e^{G_last - G_{path_j}} k̂_{path_j} δ_{path_j}^T

    with ``last = path[b, accepted[b]]``.

    Args:
        state: ``[B, H_v, D_k, D_v]`` fp32, updated for requests with ``active[b]``.
        k_hat, delta, gcum: from :func:`gdn_verify`; path ``[B, P]``; accepted ``[B]``.
    """
    h_v = delta.shape[2]
    rep = h_v // k_hat.shape[2]
    for b in range(state.shape[0]):
        if active is not None and not bool(active[b]):
            continue
        nodes = path[b, : int(accepted[b]) + 1].long()
        g_last = gcum[b, nodes[-1]]
        s = state[b] * g_last.exp()[:, None, None]
        for j in nodes.tolist():
            kj = k_hat[b, j].repeat_interleave(rep, dim=0)
            w = (g_last - gcum[b, j]).exp()
            s = s + w[:, None, None] * kj[:, :, None] * delta[b, j][:, None, :]
        state[b] = s
