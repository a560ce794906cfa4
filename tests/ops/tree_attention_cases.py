"""Shared inputs and the error rule for the tree_attention tests (CPU and CUDA)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tests.tolerance import assert_fa_close
from torch import Tensor

from difftree_rt import ops
from difftree_rt.reference.attention import tree_attention_reference
from difftree_rt.tree import anc_words


@dataclass
class Case:
    q: Tensor  # [B, H_q, N, D]
    k: Tensor  # [B, H_kv, S, D]
    v: Tensor
    prefix_len: Tensor  # [B] int64
    anc: Tensor  # [B, N, W] int32
    num_nodes: Tensor  # [B] int32
    scale: float

    def to(self, device: str | torch.device, dtype: torch.dtype | None = None) -> Case:
        def cv(t: Tensor) -> Tensor:
            return t.to(device=device, dtype=dtype if dtype is not None else t.dtype)

        return Case(
            cv(self.q),
            cv(self.k),
            cv(self.v),
            self.prefix_len.to(device),
            self.anc.to(device),
            self.num_nodes.to(device),
            self.scale,
        )


def root_only(B: int) -> tuple[Tensor, Tensor]:
    return torch.ones((B, 1, 1), dtype=torch.int32), torch.ones(B, dtype=torch.int32)


def random_tree(
    gen: torch.Generator, B: int, N: int, *, sparse: bool = False
) -> tuple[Tensor, Tensor]:
    """anc [B, N, W] and num_nodes [B] of DDTree trees of capacity N from random draft logits.
    ``sparse``: a lattice too small for the budget, so the trees end in padding rows."""
    if N == 1:
        return root_only(B)
    L, V = (2, 3) if sparse else (8, 50)
    logits = torch.randn((B, L, V), generator=gen) * 3
    tree = ops.ddtree_select(logits, N - 1)
    assert tree.anc.shape == (B, N, anc_words(N))
    return tree.anc, tree.num_nodes


def chain_anc(B: int, N: int) -> Tensor:
    """The ancestor bitmask of a chain (node i's ancestors are 0..i-1)."""
    dense = torch.ones(N, N, dtype=torch.bool).tril()
    W = anc_words(N)
    pad = torch.zeros(N, W * 32, dtype=torch.int64)
    pad[:, :N] = dense.long()
    words = (pad.view(N, W, 32) << torch.arange(32)).sum(-1)  # < 2**32
    words = torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)
    return words.expand(B, N, W).contiguous()


def make_case(
    seed: int,
    B: int,
    H_q: int,
    H_kv: int,
    N: int,
    D: int,
    prefixes: list[int],
    *,
    extra_rows: int = 3,
    sparse: bool = False,
    chain: bool = False,
) -> Case:
    gen = torch.Generator().manual_seed(seed)
    S = max(prefixes) + N + extra_rows
    q = torch.randn((B, H_q, N, D), generator=gen)
    k = torch.randn((B, H_kv, S, D), generator=gen)
    v = torch.randn((B, H_kv, S, D), generator=gen)
    # Varied score scales: some rows peaked, some flat.
    q = q * torch.empty((B, H_q, N, 1)).uniform_(0.2, 2.5, generator=gen)
    if chain:
        anc, nodes = chain_anc(B, N), torch.full((B,), N, dtype=torch.int32)
    else:
        anc, nodes = random_tree(gen, B, N, sparse=sparse)
    prefix = torch.tensor(prefixes, dtype=torch.int64)
    return Case(q, k, v, prefix, anc, nodes, D**-0.5)


def reference(c: Case, dtype: torch.dtype | None = None) -> Tensor:
    """The PyTorch reference on inputs cast to ``dtype`` (None: as given)."""
    d = c if dtype is None else c.to(c.q.device, dtype)
    return tree_attention_reference(d.q, d.k, d.v, d.prefix_len, d.anc, d.num_nodes, d.scale)


def max_err(a: Tensor, b: Tensor) -> float:
    return (a.double() - b.double().to(a.device)).abs().max().item()


def assert_within_torch_error(
    got: Tensor, c_low: Case, *, k: float = 2.0, floor: float = 2e-3
) -> None:
    """The FA-style rule: |got - exact| <= k * |PyTorch's own low-precision result - exact| +
    floor, with 'exact' the fp32 reference on the same (already rounded) low-precision inputs."""
    exact = reference(c_low.to(c_low.q.device, torch.float32))
    assert_fa_close(got, reference(c_low), exact, k=k, floor=floor, what="tree_attention")


def assert_fp32_close(got: Tensor, c: Case, *, causal: bool = False) -> None:
    """fp32 ``got`` against the fp64 reference within k x PyTorch's own fp32 error
    (tests/tolerance.py); ``causal``: the reference without a tree (``anc=None``)."""

    def ref(d: Case) -> Tensor:
        anc, nodes = (None, None) if causal else (d.anc, d.num_nodes)
        return tree_attention_reference(d.q, d.k, d.v, d.prefix_len, anc, nodes, d.scale)

    exact = ref(c.to(c.q.device, torch.float64))
    assert_fa_close(got, ref(c), exact.to(got.device), what="tree_attention fp32")
