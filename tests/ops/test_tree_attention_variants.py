"""tree_attention's attention variants (DESIGN.md §7) on the CPU: a sliding window by position
(depth over a tree, row index when causal), attention sinks, ring caches, D_v != D_k, GQA.

Two layers of truth: the PyTorch reference against a brute force written here (per node, the
visible keys listed one by one from positions, in fp64), then the CPU op against the reference
(fp32 within k x PyTorch's own fp32 error, tests/tolerance.py; bf16 within its own bf16 error).
Window edges (W = 1, W = a row's depth, W past every distance), rings far past S, ring == full
cache, and every bad variant argument (ValueError / TypeError naming it)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import pytest
import torch
from tests.tolerance import assert_fa_close
from torch import Tensor

from difftree_rt import ops
from difftree_rt.reference.attention import tree_attention_reference
from difftree_rt.tree import anc_words


@dataclass
class Layer:
    """One layer's inputs in logical form (keys by position) and as caches (keys by slot).

    committed_k/v[b]: ``[H_kv, P_b, D]`` keys at positions 0..P_b-1; tree_k/v[b]: ``[H_kv, N, D]``
    (row j at cache row P_b + j); parents[b]: parent per row (-1 root), rows >= n_b padding."""

    q: Tensor  # [B, H_q, N, D_k]
    k: Tensor  # [B, H_kv, S, D_k]
    v: Tensor  # [B, H_kv, S, D_v]
    prefix_len: Tensor  # [B] int64
    anc: Tensor | None  # [B, N, ceil(N / 32)] int32; None: causal rows
    num_nodes: Tensor  # [B] int32
    depth: Tensor  # [B, N] int64 (0 for padding rows; i for causal rows)
    scale: float
    window: int
    sinks: Tensor | None  # [H_q] float32
    ring: bool
    committed_k: list[Tensor]
    committed_v: list[Tensor]
    tree_k: list[Tensor]
    tree_v: list[Tensor]
    parents: list[list[int]]

    def run(self, **kw: object) -> Tensor:
        args: dict[str, object] = dict(
            depth=self.depth if self.anc is not None else None,
            window=self.window,
            sinks=self.sinks,
            ring=self.ring,
        )
        args.update(kw)
        prefix_len = args.pop("prefix_len", self.prefix_len)
        return ops.tree_attention(
            self.q,
            self.k,
            self.v,
            prefix_len,
            self.anc,
            self.num_nodes,
            self.scale,  # type: ignore[arg-type]
            **args,  # type: ignore[arg-type]
        )

    def reference(self, dtype: torch.dtype | None = None) -> Tensor:
        def c(t: Tensor) -> Tensor:
            return t if dtype is None else t.to(dtype)

        return tree_attention_reference(
            c(self.q),
            c(self.k),
            c(self.v),
            self.prefix_len,
            self.anc,
            self.num_nodes,
            self.scale,
            depth=self.depth if self.anc is not None else None,
            window=self.window,
            sinks=self.sinks,
            ring=self.ring,
        )

    def to(self, dtype: torch.dtype) -> Layer:
        return replace(self, q=self.q.to(dtype), k=self.k.to(dtype), v=self.v.to(dtype))


def _anc_bits(parents: list[list[int]], n_valid: list[int], N: int) -> Tensor:
    words = torch.zeros(len(parents), N, anc_words(N), dtype=torch.int64)
    for b, par in enumerate(parents):
        for i in range(N):
            x = i
            while True:
                words[b, i, x // 32] |= 1 << (x % 32)
                if i >= n_valid[b] or x == 0:  # padding rows: their own bit only
                    break
                x = par[x]
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def make_layer(
    seed: int,
    *,
    B: int = 2,
    H_q: int = 4,
    H_kv: int = 2,
    N: int = 7,
    D_k: int = 8,
    D_v: int | None = None,
    prefixes: list[int] | None = None,
    window: int = 0,
    sinks: bool = False,
    ring: bool = False,
    ring_slack: int = 0,
    causal: bool = False,
    chain: bool = False,
    padding: bool = False,
    dtype: torch.dtype = torch.float32,
) -> Layer:
    """A random layer: random parent trees (or a chain / causal rows), keys written at their
    slots of a full cache (S = max P + N + 2) or a ring (S = W - 1 + N + ring_slack)."""
    gen = torch.Generator().manual_seed(seed)
    D_v = D_k if D_v is None else D_v
    padding = padding and not causal  # causal rows have no padding
    prefixes = prefixes if prefixes is not None else [3 + 5 * b for b in range(B)]
    B = len(prefixes)
    parents, n_valid = [], []
    for _ in range(B):
        n = N if not padding else int(torch.randint(1, N + 1, (), generator=gen))
        if chain or causal:
            par = [-1, *range(N - 1)]
        else:
            par = [-1] + [int(torch.randint(0, i, (), generator=gen)) for i in range(1, N)]
        if padding:
            par = par[:n] + [0] * (N - n)
        parents.append(par)
        n_valid.append(n)
    depth = torch.zeros(B, N, dtype=torch.int64)
    for b in range(B):
        for i in range(1, n_valid[b]):
            depth[b, i] = depth[b, parents[b][i]] + 1
    S = window - 1 + N + ring_slack if ring else max(prefixes) + N + 2
    k = torch.randn(B, H_kv, S, D_k, generator=gen, dtype=torch.float64)  # stale slots: noise
    v = torch.randn(B, H_kv, S, D_v, generator=gen, dtype=torch.float64)
    ck, cv, tk, tv = [], [], [], []
    for b, P in enumerate(prefixes):
        ck.append(torch.randn(H_kv, P, D_k, generator=gen, dtype=torch.float64))
        cv.append(torch.randn(H_kv, P, D_v, generator=gen, dtype=torch.float64))
        tk.append(torch.randn(H_kv, N, D_k, generator=gen, dtype=torch.float64))
        tv.append(torch.randn(H_kv, N, D_v, generator=gen, dtype=torch.float64))
        for p in range(P):  # in a ring, later positions overwrite earlier ones
            k[b, :, p % S if ring else p] = ck[b][:, p]
            v[b, :, p % S if ring else p] = cv[b][:, p]
        for j in range(N):
            r = P + j
            k[b, :, r % S if ring else r] = tk[b][:, j]
            v[b, :, r % S if ring else r] = tv[b][:, j]
    q = torch.randn(B, H_q, N, D_k, generator=gen, dtype=torch.float64)
    q = q * torch.empty(B, H_q, N, 1, dtype=torch.float64).uniform_(0.2, 2.5, generator=gen)
    if causal:
        depth = torch.arange(N).expand(B, N).clone()
    return Layer(
        q=q.to(dtype),
        k=k.to(dtype),
        v=v.to(dtype),
        prefix_len=torch.tensor(prefixes, dtype=torch.int64),
        anc=None if causal else _anc_bits(parents, n_valid, N),
        num_nodes=torch.tensor(n_valid, dtype=torch.int32),
        depth=depth,
        scale=D_k**-0.5,
        window=window,
        sinks=torch.randn(H_q, generator=gen) * 2 if sinks else None,
        ring=ring,
        committed_k=ck,
        committed_v=cv,
        tree_k=tk,
        tree_v=tv,
        parents=parents,
    )


def brute_force(layer: Layer) -> Tensor:
    """fp64 attention from positions: for each row, the visible (key, value) list built one key
    at a time, independent of slots and rings. Returns ``[B, H_q, N, D_v]`` fp64."""
    q = layer.q.double()
    B, H_q, N, _ = q.shape
    W = layer.window
    out = torch.zeros(B, H_q, N, layer.tree_v[0].shape[-1], dtype=torch.float64)
    for b in range(B):
        P, n, par = int(layer.prefix_len[b]), int(layer.num_nodes[b]), layer.parents[b]
        H_kv = layer.tree_k[b].shape[0]
        group = H_q // H_kv
        for i in range(N):
            pos_i = int(layer.depth[b, i])
            if i >= n:
                tree_rows = [i]  # padding: only itself
            else:
                tree_rows, x = [], i
                while x != -1:
                    tree_rows.append(x)
                    x = par[x] if x > 0 else -1
            keys, vals = [], []
            for p in range(P):
                if W == 0 or (P + pos_i) - p < W:
                    keys.append(layer.committed_k[b][:, p])
                    vals.append(layer.committed_v[b][:, p])
            for j in sorted(tree_rows):
                if W == 0 or pos_i - int(layer.depth[b, j]) < W:
                    keys.append(layer.tree_k[b][:, j])
                    vals.append(layer.tree_v[b][:, j])
            K, V = torch.stack(keys, 1), torch.stack(vals, 1)  # [H_kv, n_keys, D]
            for h in range(H_q):
                s = (K[h // group] @ q[b, h, i]) * layer.scale
                if layer.sinks is not None:
                    s = torch.cat([s, layer.sinks[h : h + 1].double()])
                p_all = s.softmax(0)[: K.shape[1]]
                out[b, h, i] = p_all @ V[h // group]
    return out


def assert_cpu_close(layer: Layer, got: Tensor) -> None:
    """fp32 CPU op against the fp64 brute force within k x the fp32 reference's own error (the
    reference's softmax is fp32 even on fp64 inputs, so it is not the exact side)."""
    exact = brute_force(replace(layer, q=layer.q.double(), k=layer.k.double(), v=layer.v.double()))
    assert_fa_close(got, layer.reference(), exact, what="tree_attention variant fp32")


# ---- the reference against the brute force ----------------------------------------------------


@pytest.mark.parametrize("seed", range(40))
def test_reference_matches_brute_force(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    N = int(torch.randint(1, 12, (), generator=gen))
    window = int(torch.randint(0, 10, (), generator=gen))
    ring = window > 0 and seed % 2 == 0
    prefixes = torch.randint(0, 30, (2,), generator=gen).tolist()
    layer = make_layer(
        seed,
        N=N,
        D_k=8,
        D_v=6 if seed % 3 else 8,
        H_q=4 if seed % 4 else 2,
        H_kv=2 if seed % 4 else 1,
        prefixes=prefixes,
        window=window,
        sinks=seed % 3 == 0,
        ring=ring,
        ring_slack=seed % 3,
        chain=seed % 5 == 0,
        causal=seed % 7 == 3,
        padding=seed % 4 == 1,
        dtype=torch.float64,
    )
    # The reference's softmax runs in fp32 (as HF eager) even on fp64 inputs: fp32-level agreement;
    # a wrong mask or slot would differ by O(0.1).
    torch.testing.assert_close(layer.reference(), brute_force(layer), rtol=1e-5, atol=2e-6)


# ---- the CPU op against the reference ---------------------------------------------------------


@pytest.mark.parametrize("seed", range(30))
def test_cpu_matches_reference_random(seed: int) -> None:
    gen = torch.Generator().manual_seed(1000 + seed)
    N = int(torch.randint(1, 40, (), generator=gen))
    window = [0, 1, 2, 5, 17, 128][seed % 6]
    ring = window > 0 and seed % 2 == 1
    H_kv = [1, 2, 8][seed % 3]
    H_q = H_kv * [1, 2, 4][(seed // 3) % 3]
    prefixes = torch.randint(0, 200, (1 + seed % 3,), generator=gen).tolist()
    if ring:
        prefixes = [p * 37 for p in prefixes]  # far past S
    layer = make_layer(
        2000 + seed,
        N=N,
        H_q=H_q,
        H_kv=H_kv,
        D_k=[64, 24, 128][seed % 3],
        D_v=[64, 40, 96][(seed // 2) % 3],
        prefixes=prefixes,
        window=window,
        sinks=seed % 3 != 1,
        ring=ring,
        ring_slack=seed % 4,
        causal=seed % 5 == 2,
        padding=seed % 4 == 0,
    )
    got = layer.run()
    assert got.shape == (*layer.q.shape[:3], layer.v.shape[-1])
    assert got.transpose(1, 2).is_contiguous()  # the [B, N, H_q, D_v] buffer
    assert_cpu_close(layer, got)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cpu_low_precision_within_torch_error(dtype: torch.dtype) -> None:
    layer = make_layer(
        7,
        N=20,
        H_q=8,
        H_kv=2,
        D_k=64,
        D_v=32,
        prefixes=[300, 40],
        window=16,
        sinks=True,
        ring=True,
        ring_slack=3,
    ).to(dtype)
    layer = replace(layer, prefix_len=torch.tensor([1000, 40]))
    got = layer.run()
    assert got.dtype == dtype
    exact = replace(layer, q=layer.q.float(), k=layer.k.float(), v=layer.v.float()).reference()
    assert_fa_close(got, layer.reference(), exact, k=1.5, floor=1e-3, what="variant low precision")


def test_window_of_one_sees_only_the_row_itself() -> None:
    """W = 1: every row attends to its own key only, so out = its value (times the sink's share)."""
    layer = make_layer(11, N=9, prefixes=[20, 0], window=1, D_v=5, padding=True)
    got = layer.run()
    for b in range(2):
        rows = torch.arange(9) + int(layer.prefix_len[b])
        own_v = layer.v[b][:, rows].repeat_interleave(2, dim=0)  # [H_q, N, D_v] (GQA 4/2)
        assert torch.equal(got[b], own_v)
    sinks = torch.tensor([0.5, -1.0, 2.0, -30.0])
    got_sink = layer.run(sinks=sinks)
    q_k = torch.einsum(
        "bhnd,bhnd->bhn",
        layer.q,
        layer.k[:, :, 20:29].repeat_interleave(2, 1)[:1].expand(2, -1, -1, -1),
    )
    # Request 0 only (rows 20..28): share = 1 / (1 + exp(sink - score)).
    share = torch.sigmoid(q_k[0] * layer.scale - sinks[:, None])
    torch.testing.assert_close(got_sink[0], got[0] * share[..., None], rtol=1e-5, atol=1e-6)


def test_window_past_every_distance_is_no_window() -> None:
    layer = make_layer(12, N=12, prefixes=[30, 4], window=0, sinks=True)
    plain = layer.run()
    for W in (30 + 12, 10**6, 2**31 - 1):  # W > qp - p for every pair
        assert torch.equal(layer.run(window=W), plain)
    assert not torch.equal(layer.run(window=30), plain)  # position 0 drops out for some row


def test_window_edge_at_the_row_depth() -> None:
    """Every W from 1 to past every distance on a chain (row i at depth i): each step adds one
    ancestor (W = depth(i) + 1 adds the root) or one committed position (p = qp - W + 1)."""
    layer = make_layer(13, N=10, prefixes=[25, 25], window=0, chain=True)
    for W in range(1, 14):
        got = replace(layer, window=W).run()
        assert_cpu_close(replace(layer, window=W), got)
        bf = brute_force(replace(layer, window=W))
        torch.testing.assert_close(got.double(), bf, rtol=1e-5, atol=1e-5)


def test_chain_with_window_needs_no_depth() -> None:
    """Causal rows sit at positions prefix_len + i; passing depth = i or is_chain gives the same."""
    layer = make_layer(14, N=8, prefixes=[9, 2], window=4, causal=True, sinks=True)
    got = layer.run()
    assert_cpu_close(layer, got)
    depth = torch.arange(8).expand(2, 8).contiguous()
    assert torch.equal(layer.run(depth=depth), got)
    chain = make_layer(14, N=8, prefixes=[9, 2], window=4, chain=True, sinks=True)
    assert torch.equal(chain.run(is_chain=True, depth=None), got)


def test_ring_equals_the_full_cache() -> None:
    """The same layer over a ring (prefix far past S) and over a full cache of every position:
    the same keys in the same order, so bit-identical outputs."""
    W, N, P = 6, 9, [1000, 3]
    ring = make_layer(15, N=N, prefixes=P, window=W, ring=True, ring_slack=2, sinks=True)
    S_full = max(P) + N
    full_k = torch.randn(2, 2, S_full, 8).double()
    full_v = torch.randn(2, 2, S_full, 8).double()
    for b, p0 in enumerate(P):
        full_k[b, :, :p0] = ring.committed_k[b]
        full_v[b, :, :p0] = ring.committed_v[b]
        full_k[b, :, p0 : p0 + N] = ring.tree_k[b]
        full_v[b, :, p0 : p0 + N] = ring.tree_v[b]
    full = replace(ring, k=full_k.float(), v=full_v.float(), ring=False)
    got = ring.run()
    assert torch.equal(got, full.run())
    assert_cpu_close(ring, got)


def test_sinks_shrink_every_output() -> None:
    layer = make_layer(16, N=6, prefixes=[5, 9])
    plain = layer.run()
    # A sink of -inf adds nothing; a huge sink takes (almost) all the mass.
    assert torch.equal(layer.run(sinks=torch.full((4,), -math.inf)), plain)
    tiny = layer.run(sinks=torch.full((4,), 80.0))
    assert tiny.abs().max() < 1e-20


def test_opcheck_with_variant() -> None:
    layer = make_layer(17, N=5, D_k=16, D_v=8, prefixes=[40, 7], window=3, sinks=True, ring=True)
    args = (
        layer.q,
        layer.k,
        layer.v,
        layer.prefix_len,
        layer.anc,
        layer.num_nodes,
        layer.scale,
        False,
        0,
        layer.depth,
        3,
        layer.sinks,
        True,
    )
    torch.library.opcheck(torch.ops.difftree.tree_attention.default, args)


# ---- bad arguments ----------------------------------------------------------------------------


def test_variant_argument_errors() -> None:
    layer = make_layer(18, N=6, D_v=5, prefixes=[4, 9], window=3)
    q, k, v, plen, anc, nodes, scale = (
        layer.q,
        layer.k,
        layer.v,
        layer.prefix_len,
        layer.anc,
        layer.num_nodes,
        layer.scale,
    )
    depth = layer.depth

    def call(**kw):  # type: ignore[no-untyped-def]
        args = dict(depth=depth, window=3, sinks=None, ring=False)
        args.update(kw)
        return ops.tree_attention(q, k, v, plen, anc, nodes, scale, **args)

    call()  # the valid call
    bad = [
        (ValueError, r"^window: expected 0 \(no sliding window\)", dict(window=-1)),
        (ValueError, r"^window: ", dict(window=2**31)),
        (ValueError, r"^depth: a sliding window over a tree", dict(depth=None)),
        (ValueError, r"^depth: expected shape \[B, N\]", dict(depth=depth[:, :5])),
        (TypeError, r"^depth: expected dtype", dict(depth=depth.float())),
        (
            ValueError,
            r"^depth: depth\[1, 2\] = 6, expected 0 <= depth < N = 6",
            dict(depth=depth.index_put((torch.tensor([1]), torch.tensor([2])), torch.tensor([6]))),
        ),
        (
            ValueError,
            r"^depth: depth\[0, 0\] = -1",
            dict(depth=depth.index_put((torch.tensor([0]), torch.tensor([0])), torch.tensor([-1]))),
        ),
        (ValueError, r"^sinks: expected shape \[H_q\]", dict(sinks=torch.zeros(3))),
        (TypeError, r"^sinks: expected dtype float32", dict(sinks=torch.zeros(4).double())),
        (ValueError, r"^sinks: ", dict(sinks=torch.zeros(8)[::2])),  # not contiguous
        (ValueError, r"^ring: a ring cache needs a sliding window", dict(window=0, ring=True)),
        (ValueError, r"^ring: a ring of S = 17 slots cannot hold", dict(window=13, ring=True)),
    ]
    for exc, match, kw in bad:
        with pytest.raises(exc, match=match):
            call(**kw)
    call(window=12, ring=True)  # S = 17 = W - 1 + N: the smallest ring
    with pytest.raises(ValueError, match=r"^prefix_len: request 0 has prefix_len = -1"):
        ops.tree_attention(
            q, k, v, torch.tensor([-1, 0]), anc, nodes, scale, depth=depth, window=3, ring=True
        )
    with pytest.raises(ValueError, match=r"^v_cache: expected shape \[B, H_kv, S, D_v\]"):
        ops.tree_attention(q, k, v[:, :, :-1], plen, anc, nodes, scale)
    with pytest.raises(ValueError, match=r"^v_cache: expected shape"):
        ops.tree_attention(q, k, v[:, :1], plen, anc, nodes, scale)


def test_ring_prefix_near_int64_max() -> None:
    """A ring's output depends on prefix_len only through prefix_len % S once prefix_len >= W:
    a prefix_len near 2^63 (no overflow) equals a small one in the same residue class."""
    layer = make_layer(19, N=5, prefixes=[30, 41], window=7, ring=True, ring_slack=1, sinks=True)
    S = layer.k.shape[2]  # 12
    big = torch.tensor([2**63 - 1, 2**62 + 3])
    small = big % S + 2 * S
    assert torch.equal(layer.run(prefix_len=big), layer.run(prefix_len=small))
