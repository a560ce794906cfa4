"""Reference of ``difftree_rt.ops.node_select``: op for op the procedure of cuda/sampling_math.h.
float32 tensor operations are single IEEE roundings, so these values are bit-identical to the C++
and CUDA paths.

Vocabulary: B batch, N tree nodes, V vocab.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["gumbel_noise", "node_select", "philox4x32_10"]

_F32 = torch.float32


def _f32(x: float) -> Tensor:
    return torch.tensor(x, dtype=_F32)


def _f32_div(a: float, b: float) -> Tensor:
    return _f32(a) / _f32(b)  # the float32 quotient, as the C++ `a / bf` constants


def _pow2i(n: Tensor) -> Tensor:
    return ((n.to(torch.int32) + 127) << 23).view(_F32)


def _det_exp(t: Tensor) -> Tensor:
    ok = t >= -87.0
    t = torch.where(ok, t, torch.zeros_like(t))
    n = torch.floor(t * _f32(1.44269504) + _f32(0.5))
    r = t - n * _f32(0.693359375)
    r = r - n * _f32(-2.12194440e-4)
    p = _f32_div(1.0, 720.0).expand_as(r)
    for c in (_f32_div(1.0, 120.0), _f32_div(1.0, 24.0), _f32_div(1.0, 6.0), _f32(0.5)):
        p = p * r + c
    p = p * r + _f32(1.0)
    p = p * r + _f32(1.0)
    return torch.where(ok, p * _pow2i(n), torch.zeros_like(p))


def _det_log(x: Tensor) -> Tensor:
    u = x.view(torch.int32).to(torch.int64)
    e = ((u >> 23) & 0xFF) - 127
    mant = ((u & 0x7FFFFF) | 0x3F800000).to(torch.int32).view(_F32)
    big = mant > _f32(1.41421356)
    mant = torch.where(big, mant * _f32(0.5), mant)
    e = e + big.to(torch.int64)
    f = (mant - _f32(1.0)) / (mant + _f32(1.0))
    s = f * f
    p = _f32_div(2.0, 11.0).expand_as(s)
    for c in (_f32_div(2.0, 9.0), _f32_div(2.0, 7.0), _f32_div(2.0, 5.0), _f32_div(2.0, 3.0)):
        p = p * s + c
    lm = f * _f32(2.0) + (f * s) * p
    return e.to(_F32) * _f32(0.693147182) + lm


_M32 = 0xFFFFFFFF


def _mulhilo(a: Tensor, b: int) -> tuple[Tensor, Tensor]:
    """(hi, lo) of the 64-bit product of u32 values (int64 tensors), without overflow."""
    a_lo, a_hi = a & 0xFFFF, a >> 16
    b_lo, b_hi = b & 0xFFFF, b >> 16
    mid = a_lo * b_hi + a_hi * b_lo
    low = a_lo * b_lo + ((mid & 0xFFFF) << 16)
    return a_hi * b_hi + (mid >> 16) + (low >> 32), low & _M32


def philox4x32_10(ctr: Sequence[Tensor], key: tuple[int, int]) -> list[Tensor]:
    """Philox-4x32-10 (Random123) on int64 tensors holding u32 counters; returns 4 words."""
    c0, c1, c2, c3 = (c.to(torch.int64) & _M32 for c in ctr)
    k0, k1 = key[0] & _M32, key[1] & _M32
    for r in range(10):
        if r > 0:
            k0, k1 = (k0 + 0x9E3779B9) & _M32, (k1 + 0xBB67AE85) & _M32
        hi0, lo0 = _mulhilo(c0, 0xD2511F53)
        hi1, lo1 = _mulhilo(c2, 0xCD9E8D57)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return [c0, c1, c2, c3]


def gumbel_noise(seed: int, round_idx: int, node: int, token_ids: Tensor) -> Tensor:
    """The float32 Gumbel noise of ``token_ids`` at (seed, round, node)."""
    v = token_ids.to(torch.int64)
    zeros = torch.zeros_like(v)
    words = philox4x32_10(
        (v >> 2, zeros + node, zeros + (round_idx & _M32), zeros + ((round_idx >> 32) & _M32)),
        (seed & _M32, (seed >> 32) & _M32),
    )
    lane = v & 3
    bits = torch.where(
        lane == 0,
        words[0],
        torch.where(lane == 1, words[1], torch.where(lane == 2, words[2], words[3])),
    )
    u = (((bits >> 9) << 1) | 1).to(_F32) * _f32(5.96046448e-08)
    return _f32(0.0) - _det_log(_f32(0.0) - _det_log(u))


def _param(p: Tensor | float | int | None, b: int, default: float | int) -> float | int:
    if p is None:
        return default
    if isinstance(p, Tensor):
        return p.reshape(-1)[b].item() if p.dim() > 0 else p.item()
    return p


def node_select(
    logits: Tensor,
    temperature: Tensor | float | None = None,
    top_k: Tensor | int | None = None,
    top_p: Tensor | float | None = None,
    seed: Tensor | int | None = None,
    round_idx: Tensor | int | None = None,
) -> Tensor:
    """Reference of :func:`difftree_rt.ops.node_select` (procedure in cuda/sampling_math.h).

    Args:
        logits: ``[B, N, V]``; per-request parameters as ``[B]`` tensors or scalars.
    Returns:
        int32 ``[B, N]``.
    """
    x_all = logits.float().cpu()
    if torch.isnan(x_all).any() or (x_all == float("inf")).any():
        raise ValueError("logits: expected finite values or -inf")
    B, N, V = x_all.shape
    out = torch.empty((B, N), dtype=torch.int32)
    for b in range(B):
        temp = torch.tensor(_param(temperature, b, 0.0), dtype=_F32)
        k = int(_param(top_k, b, 0))
        p = torch.tensor(_param(top_p, b, 1.0), dtype=_F32)
        s, r = int(_param(seed, b, 0)), int(_param(round_idx, b, 0))
        s &= (1 << 64) - 1
        r &= (1 << 64) - 1
        for i in range(N):
            x = x_all[b, i]
            if not bool(temp > 0):
                out[b, i] = int(torch.argmax(x + 0.0))  # first maximum: ties -> lowest id
                continue
            z = x / temp
            order = torch.sort(z + 0.0, descending=True, stable=True).indices
            keep = V
            if 0 < k < V:  # every value tied with the k-th stays (-0 == +0; a -inf k-th keeps all)
                keep = int((z >= z[order[k - 1]]).sum())
            if bool(p < 1.0):
                m = z[order[0]]
                w = _det_exp(z[order[:keep]] - m)
                q = (w * _f32(4294967296.0)).to(torch.int64)
                thr = float(p) * float(int(q.sum()))
                reach = (q.cumsum(0).double() >= thr).nonzero()
                keep = int(reach[0]) + 1 if len(reach) else keep
            kept = order[:keep].sort().values  # ids ascending: argmax ties -> lowest id
            score = z[kept] + gumbel_noise(s, r, i, kept)
            out[b, i] = int(kept[int(torch.argmax(score))])
    return out
