"""Random inputs of the Gated-DeltaNet tree ops (reference/gated_delta.py), shared by the
emulated-kernel tests (tests/emu/test_emu_gated_delta.py) and the GPU tests
(tests/ops/test_cuda_gated_delta.py): tree shapes, ancestor bitmasks, accepted paths and the
comparison rule (a multiple of the dtype's own rounding error plus a floor)."""

from __future__ import annotations

import torch
from torch import Tensor

from difftree_rt.reference.gated_delta import conv_sources
from difftree_rt.tree import anc_words

#: Tree shapes: random parents, causal rows (tree_anc None), a chain through the mask, a wide
#: star, and random parents with self-only (padding) rows.
SHAPES = ("random", "causal", "chain", "star", "forest")


def parents(gen: torch.Generator, B: int, N: int, shape: str) -> Tensor:
    """``[B, N]`` int64 parent of each row (parent < child; -1 for a root / self-only row)."""
    out = torch.full((B, N), -1, dtype=torch.int64)
    for b in range(B):
        for i in range(1, N):
            if shape in ("causal", "chain"):
                out[b, i] = i - 1
            elif shape == "star":
                out[b, i] = 0
            else:
                near = int(torch.randint(0, 2, (1,), generator=gen))  # deep and bushy mixed
                lo = max(0, i - 3) if near else 0
                out[b, i] = int(torch.randint(lo, i, (1,), generator=gen))
                if shape == "forest" and float(torch.rand((), generator=gen)) < 0.15:
                    out[b, i] = -1
    return out


def anc_bitmask(parent: Tensor) -> Tensor:
    """``[B, N, ceil(N / 32)]`` int32 ancestor-or-self bitmask (bit j of word j / 32)."""
    B, N = parent.shape
    mask = torch.zeros(B, N, anc_words(N) * 32, dtype=torch.int64)
    for b in range(B):
        for i in range(N):
            p = int(parent[b, i])
            if p >= 0:
                mask[b, i] = mask[b, p]
            mask[b, i, i] = 1
    words = (mask.view(B, N, -1, 32) << torch.arange(32)).sum(-1)
    return ((words + 2**31) % 2**32 - 2**31).to(torch.int32)


def path_to(parent: Tensor, node: int) -> list[int]:
    """Root-to-node ids of one request's tree."""
    out = [node]
    while int(parent[out[-1]]) >= 0:
        out.append(int(parent[out[-1]]))
    return out[::-1]


def accepted_paths(
    gen: torch.Generator, parent: Tensor, P: int, index_dtype: torch.dtype = torch.int64
) -> tuple[Tensor, Tensor]:
    """``(path [B, P], accepted [B])`` to random nodes (depth < P); columns past the accepted
    ones hold garbage, as a walk leaves them."""
    B, N = parent.shape
    path = torch.randint(-(2**20), 2**20, (B, P), generator=gen)
    accepted = torch.zeros(B, dtype=torch.int64)
    for b in range(B):
        for _ in range(100):
            nodes = path_to(parent[b], int(torch.randint(0, N, (1,), generator=gen)))
            if len(nodes) <= P:
                break
        else:
            nodes = [0]
        path[b, : len(nodes)] = torch.tensor(nodes)
        accepted[b] = len(nodes) - 1
    return path.to(index_dtype), accepted.to(index_dtype)


def conv_case(
    seed: int, *, B: int, N: int, C: int, K: int, dtype: torch.dtype, shape: str = "random"
) -> dict[str, Tensor]:
    """x, conv_tail, weight, bias, src (and parent) of one gdn_conv."""
    gen = torch.Generator().manual_seed(seed)
    parent = parents(gen, B, N, shape)
    return {
        "x": torch.randn(B, N, C, generator=gen).to(dtype),
        "conv_tail": torch.randn(B, C, K - 1, generator=gen).to(dtype),
        "weight": (torch.randn(C, K, generator=gen) / K**0.5).to(dtype),
        "bias": torch.randn(C, generator=gen).to(dtype),
        "src": conv_sources(parent, K),
        "parent": parent,
    }


def verify_case(
    seed: int, *, B: int, N: int, Hk: int, rep: int, Dk: int, Dv: int, dtype: torch.dtype,
    shape: str = "random",
) -> dict[str, Tensor | None]:  # fmt: skip
    """q, k, v, g (log decay <= 0), beta, state, tree_anc (None for causal) and parent."""
    gen = torch.Generator().manual_seed(seed)
    Hv = Hk * rep
    parent = parents(gen, B, N, shape)
    return {
        "q": torch.randn(B, N, Hk, Dk, generator=gen).to(dtype),
        "k": torch.randn(B, N, Hk, Dk, generator=gen).to(dtype),
        "v": torch.randn(B, N, Hv, Dv, generator=gen).to(dtype),
        "g": -torch.rand(B, N, Hv, generator=gen) * 0.5,
        "beta": torch.rand(B, N, Hv, generator=gen),
        "state": torch.randn(B, Hv, Dk, Dv, generator=gen) * 0.5,
        "tree_anc": None if shape == "causal" else anc_bitmask(parent),
        "parent": parent,
    }


def commit_inputs(
    seed: int, *, B: int, N: int, Hk: int, rep: int, Dk: int, Dv: int
) -> dict[str, Tensor]:
    """state, k_hat, delta, gcum (cumulated along random parents) and parent of one gdn_commit."""
    gen = torch.Generator().manual_seed(seed)
    Hv = Hk * rep
    parent = parents(gen, B, N, "random")
    g = -torch.rand(B, N, Hv, generator=gen) * 0.5
    gcum = torch.zeros_like(g)
    for b in range(B):
        for i in range(N):
            p = int(parent[b, i])
            gcum[b, i] = g[b, i] + (gcum[b, p] if p >= 0 else 0.0)
    k_hat = torch.nn.functional.normalize(torch.randn(B, N, Hk, Dk, generator=gen), dim=-1)
    return {
        "state": torch.randn(B, Hv, Dk, Dv, generator=gen),
        "k_hat": k_hat,
        "delta": torch.randn(B, N, Hv, Dv, generator=gen),
        "gcum": gcum,
        "parent": parent,
    }


def assert_close(got: Tensor, ref: Tensor, *, ulps: float = 512.0, what: str = "") -> None:
    """``max|got - ref| <= ulps * eps * max(1, max|ref|)`` with eps of ref's dtype for fp32
    results; 16-bit results add two of their own ulps (a rounding flip of an fp32 difference)."""
    assert got.shape == ref.shape and got.dtype == ref.dtype, (what, got.shape, ref.shape)
    scale = max(1.0, ref.double().abs().max().item()) if ref.numel() else 1.0
    bound = ulps * torch.finfo(torch.float32).eps * scale
    if ref.dtype != torch.float32:
        bound += 2.0 * torch.finfo(ref.dtype).eps * scale
    err = (got.double() - ref.double()).abs().max().item() if ref.numel() else 0.0
    assert err <= bound, f"{what}: max|got - ref| = {err:.3g} > {bound:.3g}"
