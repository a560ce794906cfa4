"""Inputs and the error rule for the tree_attention variant tests (sliding window by position,
attention sinks, ring caches, D_v != D_k), shared by the emulated kernel (tests/emu) and the GPU
tests (tests/ops/test_cuda_tree_attention_variants.py). The truth is
:func:`difftree_rt.reference.attention.tree_attention_reference`."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from tests.tolerance import assert_fa_close
from torch import Tensor

from difftree_rt.reference.attention import tree_attention_reference
from difftree_rt.tree import anc_words


@dataclass
class VariantCase:
    q: Tensor  # [B, H_q, N, D_k]
    k: Tensor  # [B, H_kv, S, D_k]
    v: Tensor  # [B, H_kv, S, D_v]
    prefix_len: Tensor  # [B] int64
    anc: Tensor | None  # [B, N, ceil(N / 32)] int32, None: causal rows
    num_nodes: Tensor | None  # [B] int32
    depth: Tensor | None  # [B, N] int32
    scale: float
    window: int = 0
    sinks: Tensor | None = None  # [H_q] float32
    ring: bool = False

    def to(self, device: str | torch.device, dtype: torch.dtype | None = None) -> VariantCase:
        def cv(t: Tensor) -> Tensor:
            return t.to(device=device, dtype=dtype if dtype is not None else t.dtype)

        def mv(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(device)

        return replace(
            self,
            q=cv(self.q),
            k=cv(self.k),
            v=cv(self.v),
            prefix_len=self.prefix_len.to(device),
            anc=mv(self.anc),
            num_nodes=mv(self.num_nodes),
            depth=mv(self.depth),
            sinks=mv(self.sinks),
        )

    def variant(self) -> dict[str, object]:
        """The keyword arguments of the variant (``ops.tree_attention`` / the reference)."""
        return {"depth": self.depth, "window": self.window, "sinks": self.sinks, "ring": self.ring}

    def reference(self, **overrides: object) -> Tensor:
        kw = {**self.variant(), **overrides}
        return tree_attention_reference(
            self.q, self.k, self.v, self.prefix_len, self.anc, self.num_nodes, self.scale,
            **kw,  # type: ignore[arg-type]
        )  # fmt: skip


def random_parent_tree(
    gen: torch.Generator, B: int, N: int, *, reach: int = 3, sparse: bool = False
) -> tuple[Tensor, Tensor, Tensor]:
    """Random trees of capacity N whose node i's parent is one of the ``reach`` nodes before it
    (small reach: deep trees, depth up to N - 1 at reach 1). ``sparse``: fewer valid nodes than
    N, the rest padding rows (self-only ancestor bits, depth 0) as the selectors write them.

    Returns:
        anc ``[B, N, ceil(N / 32)]`` int32, num_nodes ``[B]`` int32, depth ``[B, N]`` int32.
    """
    W = anc_words(N)
    bits = torch.zeros((B, N, W * 32), dtype=torch.int64)
    depth = torch.zeros((B, N), dtype=torch.int32)
    nodes = torch.full((B,), N, dtype=torch.int32)
    for b in range(B):
        n = N if not sparse or N == 1 else int(torch.randint(1, N, (1,), generator=gen))
        nodes[b] = n
        for i in range(N):
            bits[b, i, i] = 1
            if 0 < i < n:
                lo = max(0, i - reach)
                parent = int(torch.randint(lo, i, (1,), generator=gen))
                bits[b, i, :N] |= bits[b, parent, :N]
                depth[b, i] = depth[b, parent] + 1
    words = (bits.view(B, N, W, 32) << torch.arange(32)).sum(-1)  # < 2**32
    words = torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)
    return words.contiguous(), nodes, depth


def make_variant_case(
    seed: int,
    B: int,
    H_q: int,
    H_kv: int,
    N: int,
    D_k: int,
    D_v: int,
    prefixes: list[int],
    *,
    window: int = 0,
    sinks: bool = False,
    ring: bool = False,
    slots: int | None = None,
    causal: bool = False,
    causal_depth: bool = False,
    reach: int = 3,
    sparse: bool = False,
    extra_rows: int = 3,
) -> VariantCase:
    """fp32 inputs. A full cache holds ``max(prefixes) + N + extra_rows`` rows; a ring (``ring``)
    ``slots`` slots (default the smallest legal ring, ``window - 1 + N``), any prefix.
    ``causal``: no tree (rows at 0..N-1; ``causal_depth`` passes that as ``depth``)."""
    gen = torch.Generator().manual_seed(seed)
    if ring:
        S = slots if slots is not None else window - 1 + N
    else:
        S = max(prefixes) + N + extra_rows
    q = torch.randn((B, H_q, N, D_k), generator=gen)
    k = torch.randn((B, H_kv, S, D_k), generator=gen)
    v = torch.randn((B, H_kv, S, D_v), generator=gen)
    # Varied score scales: some rows peaked, some flat.
    q = q * torch.empty((B, H_q, N, 1)).uniform_(0.2, 2.5, generator=gen)
    if causal:
        anc, nodes = None, None
        depth = (
            torch.arange(N, dtype=torch.int32).expand(B, N).contiguous() if causal_depth else None
        )
    else:
        anc, nodes, depth = random_parent_tree(gen, B, N, reach=reach, sparse=sparse)
    sink = None
    if sinks:
        # Around the logits' own range, a few heads dominant: the sink must move the output.
        sink = torch.empty(H_q).uniform_(-1.0, 3.0, generator=gen)
        sink[::3] += 4.0
    prefix = torch.tensor(prefixes, dtype=torch.int64)
    return VariantCase(q, k, v, prefix, anc, nodes, depth, D_k**-0.5, window, sink, ring)


def assert_variant_close(got: Tensor, c_low: VariantCase, *, k: float = 2.0, floor: float = 2e-3):
    """The FA-style rule on low-precision (bf16/fp16) inputs: |got - exact| <= k x |PyTorch's own
    low-precision result - exact| + floor, 'exact' the fp32 reference on the same rounded
    inputs."""
    B, H_q, N, _ = c_low.q.shape
    assert got.shape == (B, H_q, N, c_low.v.shape[-1]) and got.dtype == c_low.q.dtype
    assert torch.isfinite(got).all()
    exact = c_low.to(c_low.q.device, torch.float32).reference()
    low = c_low.reference()
    assert_fa_close(got, low, exact, k=k, floor=floor, what="tree_attention variant")


def discriminates(c: VariantCase, got: Tensor, **plain: object) -> bool:
    """Whether ``got`` (close to the case's reference) is far from the reference with the
    variant arguments in ``plain`` (e.g. ``window=0``): the variant is visible in the output."""
    other = c.to(c.q.device, torch.float32).reference(**plain)
    return (got.float() - other).abs().max().item() > 0.05
