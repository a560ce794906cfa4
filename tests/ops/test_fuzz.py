"""Property-based fuzzing of every op's argument space: a result or a clear ValueError /
TypeError / NotImplementedError naming an argument, never a crash or another exception."""

from __future__ import annotations

import re

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from difftree_rt import ops

CLEAR = (ValueError, TypeError, NotImplementedError)
NAMED = re.compile(r"^[a-z_]+(\[\d+\])?(\.[a-z_]+)?: ")

DTYPES = [
    torch.float32,
    torch.float16,
    torch.bfloat16,
    torch.float64,
    torch.int32,
    torch.int64,
    torch.bool,
    torch.uint8,
]
# Derandomized: CI must be deterministic; the libFuzzer step (scripts/test.sh) explores instead.
FUZZ = settings(
    max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True
)


@st.composite
def tensors(draw, max_dims: int = 4, max_side: int = 6):  # type: ignore[no-untyped-def]
    ndim = draw(st.integers(0, max_dims))
    shape = draw(st.lists(st.integers(0, max_side), min_size=ndim, max_size=ndim))
    dtype = draw(st.sampled_from(DTYPES))
    kind = draw(st.sampled_from(["normal", "big", "nan", "inf", "neginf", "negative"]))
    x = torch.randn(shape) * (1e6 if kind == "big" else 3)
    if kind in ("nan", "inf", "neginf") and x.numel():
        x.view(-1)[draw(st.integers(0, x.numel() - 1))] = {
            "nan": float("nan"),
            "inf": float("inf"),
            "neginf": float("-inf"),
        }[kind]
    if kind == "negative":
        x = -x.abs()
    if dtype in (torch.int32, torch.int64, torch.uint8, torch.bool):
        x = torch.nan_to_num(x, nan=0.0, posinf=7.0, neginf=-7.0).round()
        if dtype in (torch.uint8, torch.bool):
            x = x.abs()
    t = x.to(dtype)
    if draw(st.booleans()) and t.dim() >= 2:
        t = t.transpose(0, 1)
    return t


def _expect_clear(fn) -> None:  # type: ignore[no-untyped-def]
    try:
        fn()
    except CLEAR as e:
        assert NAMED.match(str(e)), f"message does not name an argument: {e}"


@FUZZ
@given(tensors(), st.integers(-3, 10))
def test_topk_logprobs_fuzz(logits: torch.Tensor, k: int) -> None:
    _expect_clear(lambda: ops.topk_logprobs(logits, k))


@FUZZ
@given(tensors(), tensors(), st.integers(-2, 5000), st.one_of(st.none(), tensors(max_dims=2)))
def test_ddtree_select_fuzz(tok, lp, budget, root) -> None:  # type: ignore[no-untyped-def]
    _expect_clear(lambda: ops.ddtree_select_from_candidates(tok, lp, budget, root))


@FUZZ
@given(tensors(), st.integers(-2, 5000))
def test_ddtree_select_logits_fuzz(logits: torch.Tensor, budget: int) -> None:
    _expect_clear(lambda: ops.ddtree_select(logits, budget))


@FUZZ
@given(
    st.integers(1, 4),
    st.integers(0, 5),
    st.integers(1, 40),
    st.data(),
)
def test_tree_walk_fuzz(B: int, L: int, budget: int, data) -> None:  # type: ignore[no-untyped-def]
    tree = ops.ddtree_select(torch.randn(B, L, 5), budget)
    # Corrupt one array arbitrarily, or pass arbitrary choices / stops / caps.
    arrays = list(tree.arrays())
    which = data.draw(st.integers(-1, 7))
    if which >= 0:
        arrays[which] = data.draw(tensors(max_dims=3, max_side=8))
    tree = type(tree).from_arrays(tuple(arrays), tree.max_depth)
    choice = data.draw(
        st.one_of(tensors(max_dims=3, max_side=8), st.just(torch.randint(0, 5, (B, budget + 1))))
    )
    stops = data.draw(st.one_of(st.none(), tensors(max_dims=2)))
    remaining = data.draw(st.one_of(st.none(), tensors(max_dims=2)))
    _expect_clear(lambda: ops.tree_walk(tree, choice, stops, remaining))


@FUZZ
@given(
    st.lists(tensors(max_dims=5), min_size=0, max_size=3),
    tensors(max_dims=2),
    tensors(max_dims=3),
    tensors(max_dims=2),
)
def test_kv_commit_fuzz(caches, base, path, accepted) -> None:  # type: ignore[no-untyped-def]
    _expect_clear(lambda: ops.kv_commit(caches, base, path, accepted))


@FUZZ
@given(st.integers(1, 3), st.integers(1, 12), st.data())
def test_kv_commit_index_fuzz(B: int, P: int, data) -> None:  # type: ignore[no-untyped-def]
    """Well-typed tensors with arbitrary index values: out-of-range rows must be rejected."""
    caches = [torch.zeros(B, 2, 16, 4) for _ in range(2)]
    ints = st.integers(-5, 40)
    path = torch.tensor(
        data.draw(st.lists(st.lists(ints, min_size=P, max_size=P), min_size=B, max_size=B))
    )
    base = torch.tensor(data.draw(st.lists(ints, min_size=B, max_size=B)))
    acc = torch.tensor(data.draw(st.lists(ints, min_size=B, max_size=B)))
    _expect_clear(lambda: ops.kv_commit(caches, base, path, acc))


@FUZZ
@given(
    tensors(),
    tensors(),
    tensors(),
    tensors(max_dims=2),
    st.one_of(st.none(), tensors(max_dims=3)),
    st.one_of(st.none(), tensors(max_dims=2)),
    st.one_of(st.none(), tensors(max_dims=2)),
    st.integers(-3, 2**40),
    st.one_of(st.none(), tensors(max_dims=2)),
    st.booleans(),
)
def test_tree_attention_fuzz(q, k, v, plen, anc, nodes, depth, window, sinks, ring) -> None:  # type: ignore[no-untyped-def]
    _expect_clear(
        lambda: ops.tree_attention(
            q, k, v, plen, anc, nodes, 0.5, depth=depth, window=window, sinks=sinks, ring=ring
        )
    )


@FUZZ
@given(st.integers(1, 3), st.integers(1, 9), st.integers(1, 20), st.data())
def test_tree_attention_variant_index_fuzz(B: int, N: int, S: int, data) -> None:  # type: ignore[no-untyped-def]
    """Well-typed inputs with arbitrary prefix lengths, depths, windows and ring flags: a result
    (finite for finite inputs) or a clear error, never a read outside the caches."""
    H_kv, D_v = data.draw(st.integers(1, 2)), data.draw(st.integers(1, 5))
    H_q = H_kv * data.draw(st.integers(1, 2))
    q, k = torch.randn(B, H_q, N, 4), torch.randn(B, H_kv, S, 4)
    v = torch.randn(B, H_kv, S, D_v)
    ints = st.integers(-3, 2**62)
    plen = torch.tensor(data.draw(st.lists(ints, min_size=B, max_size=B)))
    depth = torch.tensor(
        data.draw(
            st.lists(
                st.lists(st.integers(-2, N + 1), min_size=N, max_size=N), min_size=B, max_size=B
            )
        )
    )
    sinks = data.draw(st.one_of(st.none(), st.just(torch.randn(H_q) * 5)))
    window, ring = data.draw(st.integers(-1, S + 3)), data.draw(st.booleans())
    tree = data.draw(st.booleans())
    anc = ops.ddtree_select(torch.randn(B, 3, 4), N - 1).anc if tree and N > 1 else None
    out = []
    _expect_clear(
        lambda: out.append(
            ops.tree_attention(
                q, k, v, plen, anc, None, 0.5, depth=depth, window=window, sinks=sinks, ring=ring
            )
        )
    )
    if out:
        assert out[0].shape == (B, H_q, N, D_v) and bool(torch.isfinite(out[0]).all())


@FUZZ
@given(st.integers(1, 3), st.integers(1, 12), st.integers(1, 16), st.data())
def test_kv_commit_ring_index_fuzz(B: int, P: int, S: int, data) -> None:  # type: ignore[no-untyped-def]
    """Ring caches with arbitrary index values (base_len far past S included)."""
    caches = [torch.zeros(B, 2, S, 4) for _ in range(2)]
    ints = st.integers(-5, 2**62)
    path = torch.tensor(
        data.draw(
            st.lists(st.lists(st.integers(-2, 20), min_size=P, max_size=P), min_size=B, max_size=B)
        )
    )
    base = torch.tensor(data.draw(st.lists(ints, min_size=B, max_size=B)))
    acc = torch.tensor(data.draw(st.lists(st.integers(-2, 14), min_size=B, max_size=B)))
    _expect_clear(lambda: ops.kv_commit(caches, base, path, acc, ring=True))


@FUZZ
@given(
    tensors(),
    tensors(),
    tensors(max_dims=3),
    st.one_of(st.none(), tensors(max_dims=2)),
    tensors(),
    st.booleans(),
)
def test_gdn_conv_fuzz(x, tail, weight, bias, src, act) -> None:  # type: ignore[no-untyped-def]
    _expect_clear(lambda: ops.gdn_conv(x, tail, weight, bias, src, act))


@FUZZ
@given(
    tensors(),
    tensors(),
    tensors(),
    tensors(max_dims=3),
    tensors(max_dims=2),
    st.one_of(st.none(), tensors(max_dims=2)),
)
def test_gdn_conv_commit_fuzz(tail, x, src, path, acc, active) -> None:  # type: ignore[no-untyped-def]
    _expect_clear(lambda: ops.gdn_conv_commit(tail, x, src, path, acc, active))


@FUZZ
@given(
    tensors(),
    tensors(),
    tensors(),
    tensors(max_dims=3),
    tensors(max_dims=3),
    tensors(),
    st.one_of(st.none(), tensors(max_dims=3)),
)
def test_gdn_verify_fuzz(q, k, v, g, beta, state, anc) -> None:  # type: ignore[no-untyped-def]
    _expect_clear(lambda: ops.gdn_verify(q, k, v, g, beta, state, anc))


@FUZZ
@given(
    tensors(),
    tensors(),
    tensors(),
    tensors(max_dims=3),
    tensors(max_dims=3),
    tensors(max_dims=2),
    st.one_of(st.none(), tensors(max_dims=2)),
)
def test_gdn_commit_fuzz(state, k_hat, delta, gcum, path, acc, active) -> None:  # type: ignore[no-untyped-def]
    _expect_clear(lambda: ops.gdn_commit(state, k_hat, delta, gcum, path, acc, active))


@FUZZ
@given(st.integers(1, 3), st.integers(1, 9), st.integers(1, 4), st.integers(1, 6), st.data())
def test_gdn_index_fuzz(B: int, N: int, K: int, P: int, data) -> None:  # type: ignore[no-untyped-def]
    """Well-typed gated-delta inputs with arbitrary src / path / accepted / active / tree_anc
    values: a clear error that leaves the states unchanged, or a finite result."""

    def ints(lo: int, hi: int, *shape: int) -> torch.Tensor:
        n = 1
        for s in shape:
            n *= s
        return torch.tensor(data.draw(st.lists(st.integers(lo, hi), min_size=n, max_size=n)))

    C, H_k, H_v, D = 3, 1, 2, 4
    x, tail = torch.randn(B, N, C), torch.randn(B, C, K - 1)
    weight, bias = torch.randn(C, K), torch.randn(C)
    src = ints(-2, K + N + 1, B, N, K).reshape(B, N, K).to(torch.int32)
    path = ints(-2, N + 1, B, P).reshape(B, P)
    acc = ints(-1, P, B)
    active = data.draw(st.one_of(st.none(), st.just(ints(0, 1, B).bool())))
    words = (N + 31) // 32
    anc = data.draw(
        st.one_of(st.none(), st.just(ints(-(2**31), 2**31 - 1, B, N, words).reshape(B, N, words)))
    )
    anc = None if anc is None else anc.to(torch.int32)
    y: list[torch.Tensor] = []
    _expect_clear(lambda: y.append(ops.gdn_conv(x, tail, weight, bias, src)))
    if y:
        assert bool(torch.isfinite(y[0]).all())
    before = tail.clone()
    try:
        ops.gdn_conv_commit(tail, x, src, path, acc, active)
    except ValueError as e:
        assert NAMED.match(str(e)), str(e)
        assert torch.equal(tail, before)
    q, k = torch.randn(B, N, H_k, D), torch.randn(B, N, H_k, D)
    v, g = torch.randn(B, N, H_v, D), -torch.rand(B, N, H_v)
    beta, state = torch.rand(B, N, H_v), torch.randn(B, H_v, D, D)
    out, k_hat, delta, gcum = ops.gdn_verify(q, k, v, g, beta, state, anc)
    assert all(bool(torch.isfinite(t).all()) for t in (out, k_hat, delta, gcum))
    before = state.clone()
    try:
        ops.gdn_commit(state, k_hat, delta, gcum, path, acc, active)
        assert bool(torch.isfinite(state).all())
    except ValueError as e:
        assert NAMED.match(str(e)), str(e)
        assert torch.equal(state, before)
