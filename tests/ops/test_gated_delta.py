"""The Gated-DeltaNet tree ops (CPU) against the plain-PyTorch reference: conv, conv commit,
verify and commit on random trees, causal rows, deep chains, wide stars and single rows; the
commit after a verify against the recurrence run along the accepted path; bad inputs; opcheck
and torch.compile."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from difftree_rt import ops
from difftree_rt.reference import gated_delta as ref
from difftree_rt.tree import anc_words

F32_TOL = {"rtol": 1e-5, "atol": 1e-5}


def tol_for(dtype: torch.dtype) -> dict[str, float]:
    """bf16 / fp16 outputs: one rounding of a value whose fp32 computation may differ in the
    last bits, so a couple of ulps of the dtype (its eps, relative) plus a floor of that size."""
    if dtype == torch.float32:
        return F32_TOL
    eps = torch.finfo(dtype).eps
    return {"rtol": 2 * eps, "atol": 2 * eps}


# ---- trees ------------------------------------------------------------------------------------


def make_parents(B: int, N: int, kind: str, gen: torch.Generator) -> Tensor:
    """``[B, N]`` int64 parents, -1 for the root, parent < child."""
    parent = torch.full((B, N), -1, dtype=torch.int64)
    for b in range(B):
        for i in range(1, N):
            if kind == "chain":
                parent[b, i] = i - 1
            elif kind == "star":
                parent[b, i] = 0
            else:
                parent[b, i] = int(torch.randint(0, i, (1,), generator=gen))
    return parent


def anc_from_parents(parent: Tensor) -> Tensor:
    """``[B, N, ceil(N/32)]`` int32 ancestor-or-self bits."""
    B, N = parent.shape
    anc = torch.zeros((B, N, anc_words(N)), dtype=torch.int64)
    for b in range(B):
        for i in range(N):
            j = i
            while j >= 0:
                anc[b, i, j // 32] |= 1 << (j % 32)
                j = int(parent[b, j])
    return anc.to(torch.int32)  # the low 32 bits of each word


def path_to(parent: Tensor, b: int, last: int, P: int) -> list[int]:
    """Root-to-``last`` node ids padded with -1 to P columns."""
    nodes = []
    j = last
    while j >= 0:
        nodes.append(j)
        j = int(parent[b, j])
    nodes.reverse()
    return nodes + [-1] * (P - len(nodes))


def random_paths(parent: Tensor, gen: torch.Generator, index_dtype=torch.int64):  # type: ignore[no-untyped-def]
    """A random node per request and its root path: ``(path [B, P], accepted [B])``."""
    B, N = parent.shape
    P = N + 1
    rows, acc = [], []
    for b in range(B):
        last = int(torch.randint(0, N, (1,), generator=gen))
        p = path_to(parent, b, last, P)
        rows.append(p)
        acc.append(sum(1 for x in p if x >= 0) - 1)
    return torch.tensor(rows, dtype=index_dtype), torch.tensor(acc, dtype=index_dtype)


# (kind, B, N)
TREES = [
    ("random", 2, 9),
    ("random", 3, 40),  # two anc words
    ("chain", 2, 17),  # depth 16
    ("star", 2, 12),
    ("random", 2, 1),
    ("causal", 2, 7),
]
TREE_IDS = [f"{k}-B{b}-N{n}" for k, b, n in TREES]


def tree_inputs(kind: str, B: int, N: int, gen: torch.Generator):  # type: ignore[no-untyped-def]
    """``(parent [B, N], tree_anc or None)``."""
    if kind == "causal":
        return make_parents(B, N, "chain", gen), None
    parent = make_parents(B, N, kind, gen)
    return parent, anc_from_parents(parent)


# ---- gdn_conv / gdn_conv_commit -----------------------------------------------------------------


def conv_inputs(B: int, N: int, C: int, K: int, dtype: torch.dtype, gen: torch.Generator):  # type: ignore[no-untyped-def]
    x = torch.randn(B, N, C, generator=gen).to(dtype)
    tail = torch.randn(B, C, K - 1, generator=gen).to(dtype)
    weight = (torch.randn(C, K, generator=gen) * 0.5).to(dtype)
    bias = (torch.randn(C, generator=gen) * 0.1).to(dtype)
    return x, tail, weight, bias


@pytest.mark.parametrize("K", [1, 2, 4])
@pytest.mark.parametrize("kind,B,N", TREES, ids=TREE_IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_gdn_conv_matches_reference(kind: str, B: int, N: int, K: int, dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(N * 10 + K)
    _, anc = tree_inputs(kind, B, N, gen)
    src = ref.conv_sources(ref.parents_from_anc(anc, B, N, torch.device("cpu")), K)
    x, tail, weight, bias = conv_inputs(B, N, 6, K, dtype, gen)
    tol = tol_for(dtype)
    for b_, act in ((bias, True), (None, True), (bias, False)):
        got = ops.gdn_conv(x, tail, weight, b_, src, activation=act)
        want = ref.gdn_conv(x, tail, weight, b_, src, activation=act)
        assert got.dtype == dtype and got.shape == (B, N, 6)
        torch.testing.assert_close(got.float(), want.float(), **tol)


def test_gdn_conv_hand_checked() -> None:
    """K = 2, a root and two children: row i sees its parent's row (the tail for the root)."""
    x = torch.tensor([[[1.0], [2.0], [4.0]]])
    tail = torch.tensor([[[10.0]]])
    weight = torch.tensor([[0.5, 1.0]])  # weight[:, K - 1] multiplies the row itself
    parent = torch.tensor([[-1, 0, 0]])
    src = ref.conv_sources(parent, 2)
    assert src.tolist() == [[[1, 0], [2, 1], [3, 1]]]
    got = ops.gdn_conv(x, tail, weight, torch.tensor([0.25]), src, activation=False)
    assert got.flatten().tolist() == [1 + 5 + 0.25, 2 + 0.5 + 0.25, 4 + 0.5 + 0.25]


@pytest.mark.parametrize("K", [1, 2, 4])
@pytest.mark.parametrize("kind,B,N", TREES, ids=TREE_IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_gdn_conv_commit_matches_reference(
    kind: str, B: int, N: int, K: int, dtype: torch.dtype
) -> None:
    gen = torch.Generator().manual_seed(N * 7 + K)
    parent, _ = tree_inputs(kind, B, N, gen)
    src = ref.conv_sources(parent, K)
    x, tail, _, _ = conv_inputs(B, N, 5, K, dtype, gen)
    path, accepted = random_paths(parent, gen, torch.int32)
    for active in (None, torch.arange(B) % 2 == 0):
        got, want = tail.clone(), tail.clone()
        ops.gdn_conv_commit(got, x, src, path, accepted, active)
        ref.gdn_conv_commit(want, x, src, path, accepted, active)
        assert torch.equal(got, want)  # pure copies
        if active is not None and K > 1:
            assert torch.equal(got[~active], tail[~active])


def test_gdn_conv_commit_accepted_zero_shifts_in_the_root() -> None:
    """Accepting only the root shifts the root's row into the tail (oldest first)."""
    x = torch.arange(12, dtype=torch.float32).reshape(1, 4, 3)
    tail = -torch.arange(9, dtype=torch.float32).reshape(1, 3, 3)
    src = ref.conv_sources(torch.tensor([[-1, 0, 1, 1]]), 4)
    want = torch.cat([tail[:, :, 1:], x[:, 0, :, None]], dim=2)
    ops.gdn_conv_commit(tail, x, src, torch.tensor([[0, 2, -1]]), torch.tensor([0]))
    assert torch.equal(tail, want)


# ---- gdn_verify -------------------------------------------------------------------------------


def verify_inputs(B, N, H_k, H_v, D_k, D_v, dtype, gen):  # type: ignore[no-untyped-def]
    q = torch.randn(B, N, H_k, D_k, generator=gen).to(dtype)
    k = torch.randn(B, N, H_k, D_k, generator=gen).to(dtype)
    v = torch.randn(B, N, H_v, D_v, generator=gen).to(dtype)
    g = -torch.nn.functional.softplus(torch.randn(B, N, H_v, generator=gen))  # log decay <= 0
    beta = torch.sigmoid(torch.randn(B, N, H_v, generator=gen))
    state = torch.randn(B, H_v, D_k, D_v, generator=gen) * 0.5
    return q, k, v, g, beta, state


@pytest.mark.parametrize("heads", [(2, 2), (2, 4)], ids=["Hv=Hk", "Hv=2Hk"])
@pytest.mark.parametrize("kind,B,N", TREES, ids=TREE_IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_gdn_verify_matches_reference(
    kind: str, B: int, N: int, heads: tuple[int, int], dtype: torch.dtype
) -> None:
    gen = torch.Generator().manual_seed(N * 3 + heads[1])
    _, anc = tree_inputs(kind, B, N, gen)
    q, k, v, g, beta, state = verify_inputs(B, N, *heads, 8, 6, dtype, gen)
    state0 = state.clone()
    out, k_hat, delta, gcum = ops.gdn_verify(q, k, v, g, beta, state, anc)
    want = ref.gdn_verify(q, k, v, g, beta, state, anc)
    assert torch.equal(state, state0)
    assert out.dtype == dtype and out.shape == v.shape
    assert k_hat.dtype == delta.dtype == gcum.dtype == torch.float32
    # The inputs are the same values in both, so the fp32 outputs are tight for 16-bit inputs too.
    torch.testing.assert_close(k_hat, want[1], **F32_TOL)
    torch.testing.assert_close(delta, want[2], **F32_TOL)
    torch.testing.assert_close(gcum, want[3], **F32_TOL)
    tol = tol_for(dtype)
    torch.testing.assert_close(out.float(), want[0].float(), **tol)


def test_gdn_verify_uint32_anc_and_causal_equal_chain() -> None:
    """A chain's bitmask (also as uint32) gives the causal rows' result."""
    gen = torch.Generator().manual_seed(5)
    B, N = 2, 37
    q, k, v, g, beta, state = verify_inputs(B, N, 1, 2, 4, 3, torch.float32, gen)
    anc = anc_from_parents(make_parents(B, N, "chain", gen))
    causal = ops.gdn_verify(q, k, v, g, beta, state, None)
    for mask in (anc, anc.view(torch.uint32)):
        for a, c in zip(ops.gdn_verify(q, k, v, g, beta, state, mask), causal):
            assert torch.equal(a, c)


def test_gdn_verify_row_equals_its_path_as_a_chain() -> None:
    """Every tree row's output equals the causal verify of its root path alone."""
    gen = torch.Generator().manual_seed(11)
    B, N = 1, 15
    parent = make_parents(B, N, "random", gen)
    q, k, v, g, beta, state = verify_inputs(B, N, 2, 4, 5, 4, torch.float32, gen)
    out, _, _, gcum = ops.gdn_verify(q, k, v, g, beta, state, anc_from_parents(parent))
    for i in range(N):
        nodes = torch.tensor([j for j in path_to(parent, 0, i, N) if j >= 0])
        rows = [t[:, nodes].contiguous() for t in (q, k, v, g, beta)]
        chain_out, _, _, chain_g = ops.gdn_verify(*rows, state, None)
        torch.testing.assert_close(out[:, i], chain_out[:, -1], **F32_TOL)
        torch.testing.assert_close(gcum[:, i], chain_g[:, -1], **F32_TOL)


def test_gdn_verify_single_row_hand_checked() -> None:
    """N = 1, D_k = D_v = 1: δ = β (v - e^g S k̂), o = (e^g S + k̂ δ) q̂ with k̂ = q̂ sqrt(1) = ±1."""
    q = torch.tensor([[[[2.0]]]])
    k = torch.tensor([[[[-3.0]]]])
    v = torch.tensor([[[[1.5]]]])
    g = torch.tensor([[[-0.5]]])
    beta = torch.tensor([[[0.5]]])
    state = torch.tensor([[[[2.0]]]])
    out, k_hat, delta, gcum = ops.gdn_verify(q, k, v, g, beta, state, None)
    kh = -3.0 / (9.0 + 1e-6) ** 0.5
    qh = 2.0 / (4.0 + 1e-6) ** 0.5
    decay = torch.exp(torch.tensor(-0.5)).item()
    d = 0.5 * (1.5 - decay * 2.0 * kh)
    assert k_hat.item() == pytest.approx(kh, rel=1e-6)
    assert delta.item() == pytest.approx(d, rel=1e-6)
    assert gcum.item() == -0.5
    assert out.item() == pytest.approx((decay * 2.0 + kh * d) * qh, rel=1e-6)


# ---- gdn_commit -------------------------------------------------------------------------------


def run_path(state: Tensor, q, k, v, g, beta, nodes: list[int]) -> Tensor:  # type: ignore[no-untyped-def]
    """Request 0's state after the recurrence along ``nodes`` (the definition, row by row)."""
    H_v = v.shape[2]
    rep = H_v // k.shape[2]
    s = state[0].clone()
    for j in nodes:
        kh = k[0, j].float()
        kh = kh * torch.rsqrt((kh * kh).sum(-1, keepdim=True) + ref.L2NORM_EPS)
        kh = kh.repeat_interleave(rep, dim=0)  # [H_v, D_k]
        s = s * g[0, j].exp()[:, None, None]
        d = (v[0, j].float() - torch.einsum("hkv,hk->hv", s, kh)) * beta[0, j][:, None]
        s = s + kh[:, :, None] * d[:, None, :]
    return s


@pytest.mark.parametrize("heads", [(2, 2), (1, 2)], ids=["Hv=Hk", "Hv=2Hk"])
@pytest.mark.parametrize("kind,B,N", TREES, ids=TREE_IDS)
def test_gdn_commit_matches_reference(kind: str, B: int, N: int, heads: tuple[int, int]) -> None:
    gen = torch.Generator().manual_seed(N + heads[1])
    parent, anc = tree_inputs(kind, B, N, gen)
    q, k, v, g, beta, state = verify_inputs(B, N, *heads, 4, 5, torch.float32, gen)
    _, k_hat, delta, gcum = ops.gdn_verify(q, k, v, g, beta, state, anc)
    path, accepted = random_paths(parent, gen)
    zero = torch.zeros_like(accepted)
    for acc, active in ((accepted, None), (accepted, torch.arange(B) % 2 == 1), (zero, None)):
        got, want = state.clone(), state.clone()
        ops.gdn_commit(got, k_hat, delta, gcum, path, acc, active)
        ref.gdn_commit(want, k_hat, delta, gcum, path, acc, active)
        torch.testing.assert_close(got, want, **F32_TOL)
        if active is not None:
            assert torch.equal(got[~active], state[~active])


@pytest.mark.parametrize("kind", ["random", "chain", "star"])
def test_gdn_commit_after_verify_equals_running_the_path(kind: str) -> None:
    gen = torch.Generator().manual_seed(3)
    B, N = 1, 17
    parent, anc = tree_inputs(kind, B, N, gen)
    q, k, v, g, beta, state = verify_inputs(B, N, 2, 4, 6, 5, torch.float32, gen)
    _, k_hat, delta, gcum = ops.gdn_verify(q, k, v, g, beta, state, anc)
    for last in (0, N - 1, N // 2):
        nodes = [j for j in path_to(parent, 0, last, N) if j >= 0]
        path = torch.tensor([path_to(parent, 0, last, N)])
        got = state.clone()
        ops.gdn_commit(got, k_hat, delta, gcum, path, torch.tensor([len(nodes) - 1]))
        torch.testing.assert_close(got[0], run_path(state, q, k, v, g, beta, nodes), **F32_TOL)


def test_gdn_commit_then_verify_continues_the_chain() -> None:
    """Two rounds of a causal chain (commit of the first round's rows, then a verify of the
    rest from the committed state) equal one verify of the whole chain."""
    gen = torch.Generator().manual_seed(8)
    B, N, split = 2, 12, 5
    q, k, v, g, beta, state = verify_inputs(B, N, 2, 2, 4, 4, torch.float32, gen)
    whole = ops.gdn_verify(q, k, v, g, beta, state, None)
    first = [t[:, :split].contiguous() for t in (q, k, v, g, beta)]
    rest = [t[:, split:].contiguous() for t in (q, k, v, g, beta)]
    _, k_hat, delta, gcum = ops.gdn_verify(*first, state, None)
    committed = state.clone()
    path = torch.arange(split).expand(B, split).contiguous()
    ops.gdn_commit(committed, k_hat, delta, gcum, path, torch.full((B,), split - 1))
    out2 = ops.gdn_verify(*rest, committed, None)[0]
    torch.testing.assert_close(out2, whole[0][:, split:], **F32_TOL)


# ---- bad inputs -------------------------------------------------------------------------------


def _good_conv():  # type: ignore[no-untyped-def]
    gen = torch.Generator().manual_seed(0)
    x, tail, weight, bias = conv_inputs(2, 4, 3, 3, torch.float32, gen)
    src = ref.conv_sources(torch.tensor([[-1, 0, 0, 1]] * 2), 3)
    return x, tail, weight, bias, src


def test_gdn_conv_bad_inputs() -> None:
    x, tail, weight, bias, src = _good_conv()
    with pytest.raises(ValueError, match=r"^weight: "):
        ops.gdn_conv(x, tail, weight[:, :2].contiguous(), bias, src)
    with pytest.raises(ValueError, match=r"^conv_tail: "):
        ops.gdn_conv(x, tail[:, :, :1].contiguous(), weight, bias, src)
    with pytest.raises(ValueError, match=r"^bias: "):
        ops.gdn_conv(x, tail, weight, bias[:2].contiguous(), src)
    with pytest.raises(ValueError, match=r"^x: "):
        ops.gdn_conv(x[0], tail, weight, bias, src)
    with pytest.raises(ValueError, match=r"^src: "):
        ops.gdn_conv(x, tail, weight, bias, src[:, :, :0].contiguous())
    with pytest.raises(TypeError, match=r"^src: "):
        ops.gdn_conv(x, tail, weight, bias, src.long())
    with pytest.raises(TypeError, match=r"^weight: "):
        ops.gdn_conv(x, tail, weight.half(), bias, src)
    for bad in (-1, 6):  # K - 1 + N = 6 rows
        s = src.clone()
        s[1, 2, 1] = bad
        with pytest.raises(ValueError, match=r"^src: expected values in \[0, K - 1 \+ N\)"):
            ops.gdn_conv(x, tail, weight, bias, s)


def test_gdn_conv_commit_bad_inputs_leave_the_tail() -> None:
    x, tail, _, _, src = _good_conv()
    before = tail.clone()
    path, acc = torch.tensor([[0, 1, 3], [0, 2, -1]]), torch.tensor([2, 1])
    cases = [
        ("path", torch.tensor([[0, 1, 4], [0, 2, -1]]), acc, src),  # node 4 >= N
        ("path", torch.tensor([[1, 1, 3], [0, 2, -1]]), acc, src),  # not from the root
        ("path", torch.tensor([[0, 3, 1], [0, 2, -1]]), acc, src),  # not increasing
        ("accepted", path, torch.tensor([2, 3]), src),
        ("accepted", path, torch.tensor([-1, 0]), src),
    ]
    bad_src = src.clone()
    bad_src[1, 2, 0] = 99
    cases.append(("src", path, acc, bad_src))
    for name, p, a, s in cases:
        with pytest.raises(ValueError, match=rf"^{name}: "):
            ops.gdn_conv_commit(tail, x, s, p, a)
        assert torch.equal(tail, before)
    with pytest.raises(ValueError, match=r"^active: "):
        ops.gdn_conv_commit(tail, x, src, path, acc, torch.ones(3, dtype=torch.bool))
    with pytest.raises(TypeError, match=r"^active: "):
        ops.gdn_conv_commit(tail, x, src, path, acc, torch.ones(2, dtype=torch.int32))
    # An inactive request's path is not read.
    ops.gdn_conv_commit(tail, x, src, torch.tensor([[0, 1, 3], [7, 7, 7]]), torch.tensor([2, 9]),
                        torch.tensor([True, False]))  # fmt: skip


def test_gdn_verify_bad_inputs() -> None:
    gen = torch.Generator().manual_seed(0)
    q, k, v, g, beta, state = verify_inputs(2, 5, 2, 4, 4, 3, torch.float32, gen)
    anc = anc_from_parents(make_parents(2, 5, "random", gen))
    with pytest.raises(ValueError, match=r"^v: expected H_v a positive multiple of H_k"):
        ops.gdn_verify(q, k, v[:, :, :3].contiguous(), g[..., :3].contiguous(),
                       beta[..., :3].contiguous(), state[:, :3].contiguous(), anc)  # fmt: skip
    with pytest.raises(ValueError, match=r"^k: "):
        ops.gdn_verify(q, k[:, :4].contiguous(), v, g, beta, state, anc)
    with pytest.raises(ValueError, match=r"^state: "):
        ops.gdn_verify(q, k, v, g, beta, state[..., :2].contiguous(), anc)
    with pytest.raises(ValueError, match=r"^tree_anc: "):
        ops.gdn_verify(q, k, v, g, beta, state, anc[:, :4].contiguous())
    with pytest.raises(ValueError, match=r"^v: "):
        ops.gdn_verify(q, k, v[0], g, beta, state, anc)
    with pytest.raises(TypeError, match=r"^g: "):
        ops.gdn_verify(q, k, v, g.half(), beta, state, anc)
    with pytest.raises(TypeError, match=r"^v: "):
        ops.gdn_verify(q, k, v.bfloat16(), g, beta, state, anc)
    with pytest.raises(TypeError, match=r"^state: "):
        ops.gdn_verify(q, k, v, g, beta, state.double(), anc)
    with pytest.raises(ValueError, match=r"^q: expected a contiguous"):
        ops.gdn_verify(q.transpose(2, 3), k, v, g, beta, state, anc)


def test_gdn_commit_bad_inputs_leave_the_state() -> None:
    gen = torch.Generator().manual_seed(0)
    q, k, v, g, beta, state = verify_inputs(2, 5, 1, 2, 4, 3, torch.float32, gen)
    _, k_hat, delta, gcum = ops.gdn_verify(q, k, v, g, beta, state, None)
    before = state.clone()
    path, acc = torch.tensor([[0, 1, 2], [0, 1, 2]]), torch.tensor([2, 1])
    for name, p, a in [
        ("path", torch.tensor([[0, 1, 2], [0, 5, 2]]), acc),
        ("path", torch.tensor([[0, 1, 2], [0, -1, 2]]), acc),
        ("accepted", path, torch.tensor([2, 3])),
    ]:
        with pytest.raises(ValueError, match=rf"^{name}: "):
            ops.gdn_commit(state, k_hat, delta, gcum, p, a)
        assert torch.equal(state, before)
    with pytest.raises(ValueError, match=r"^gcum: "):
        ops.gdn_commit(state, k_hat, delta, gcum[:, :4].contiguous(), path, acc)
    with pytest.raises(ValueError, match=r"^path: "):
        ops.gdn_commit(state, k_hat, delta, gcum, path[:, :0].contiguous(), acc)
    with pytest.raises(TypeError, match=r"^k_hat: "):
        ops.gdn_commit(state, k_hat.bfloat16(), delta, gcum, path, acc)


# ---- torch.library ----------------------------------------------------------------------------


def _small_round():  # type: ignore[no-untyped-def]
    gen = torch.Generator().manual_seed(1)
    B, N, K = 2, 5, 3
    parent = make_parents(B, N, "random", gen)
    anc = anc_from_parents(parent)
    x, tail, weight, bias = conv_inputs(B, N, 4, K, torch.float32, gen)
    src = ref.conv_sources(parent, K)
    q, k, v, g, beta, state = verify_inputs(B, N, 1, 2, 4, 3, torch.float32, gen)
    path, accepted = random_paths(parent, gen)
    return x, tail, weight, bias, src, q, k, v, g, beta, state, anc, path, accepted


def test_opcheck_gdn_ops() -> None:
    x, tail, weight, bias, src, q, k, v, g, beta, state, anc, path, acc = _small_round()
    active = torch.tensor([True, False])
    torch.library.opcheck(torch.ops.difftree.gdn_conv, (x, tail, weight, bias, src, True))
    torch.library.opcheck(torch.ops.difftree.gdn_conv, (x, tail, weight, None, src, False))
    torch.library.opcheck(torch.ops.difftree.gdn_conv_commit, (tail, x, src, path, acc, active))
    torch.library.opcheck(torch.ops.difftree.gdn_verify, (q, k, v, g, beta, state, anc))
    torch.library.opcheck(torch.ops.difftree.gdn_verify, (q, k, v, g, beta, state, None))
    _, k_hat, delta, gcum = ops.gdn_verify(q, k, v, g, beta, state, anc)
    args = (state, k_hat, delta, gcum, path, acc, None)
    torch.library.opcheck(torch.ops.difftree.gdn_commit, args)


def test_torch_compile_gdn_round() -> None:
    """conv -> verify -> both commits traces with fullgraph and matches eager (states too)."""

    def step(x, tail, weight, bias, src, q, k, v, g, beta, state, anc, path, acc):  # type: ignore[no-untyped-def]
        y = ops.gdn_conv(x, tail, weight, bias, src)
        out, k_hat, delta, gcum = ops.gdn_verify(q, k, v, g, beta, state, anc)
        ops.gdn_conv_commit(tail, x, src, path, acc)
        ops.gdn_commit(state, k_hat, delta, gcum, path, acc)
        return y, out

    args = _small_round()
    eager = [a.clone() if isinstance(a, Tensor) else a for a in args]
    compiled = [a.clone() if isinstance(a, Tensor) else a for a in args]
    want = step(*eager)
    got = torch.compile(step, fullgraph=True, backend="aot_eager")(*compiled)
    for a, b in zip(got, want):
        assert torch.equal(a, b)
    assert torch.equal(compiled[1], eager[1])  # conv tail
    assert torch.equal(compiled[10], eager[10])  # state
    assert not torch.equal(eager[10], args[10])  # the commit did change it
