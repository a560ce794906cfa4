"""node_select on the CPU: bit-exact against the reference, greedy semantics, and the sampled
distribution against softmax of the processed logits."""

from __future__ import annotations

import math

import pytest
import torch

from difftree_rt import ops, reference


def _logits(gen: torch.Generator, B: int, N: int, V: int, dtype: torch.dtype) -> torch.Tensor:
    x = torch.randn((B, N, V), generator=gen) * 3
    if V > 3:
        x[..., 1] = x[..., 2]  # exact ties
        x[..., -1] = float("-inf")
    return x.to(dtype)


@pytest.mark.parametrize("seed", range(40))
def test_node_select_matches_reference(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    B, N, V = 1 + seed % 3, 1 + seed % 5, [1, 2, 7, 33, 100, 257][seed % 6]
    dtype = [torch.float32, torch.bfloat16, torch.float16][seed % 3]
    x = _logits(gen, B, N, V, dtype)
    temperature = torch.tensor([[0.0, 0.7, 1.0, 1.5][(seed + b) % 4] for b in range(B)])
    top_k = torch.tensor(
        [[0, 1, 3, V, 50][(seed + 2 * b) % 5] for b in range(B)], dtype=torch.int32
    )
    top_p = torch.tensor([[1.0, 0.9, 0.5, 0.0, 0.999][(seed + b) % 5] for b in range(B)])
    seeds = torch.randint(0, 2**62, (B,), generator=gen)
    rounds = torch.randint(0, 2**40, (B,), generator=gen)
    got = ops.node_select(x, temperature, top_k, top_p, seeds, rounds)
    ref = reference.node_select(x, temperature, top_k, top_p, seeds, rounds)
    assert got.dtype == torch.int32 and got.shape == (B, N)
    assert torch.equal(got, ref)


def test_greedy_is_argmax_lowest_id() -> None:
    x = torch.tensor([[[1.0, 3.0, 3.0, -float("inf")], [0.0, -0.0, 0.0, -1.0]]])
    assert ops.node_select(x).tolist() == [[1, 0]]
    assert ops.node_select(x, temperature=0.0, seed=5).tolist() == [[1, 0]]


def test_deterministic_per_key_and_varies_with_round() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((2, 8, 50), generator=gen)
    a = ops.node_select(x, 1.0, seed=7, round_idx=3)
    assert torch.equal(a, ops.node_select(x, 1.0, seed=7, round_idx=3))
    draws = {
        tuple(ops.node_select(x, 1.0, seed=7, round_idx=r).flatten().tolist()) for r in range(5)
    }
    assert len(draws) > 1


def test_top_k_one_and_top_p_zero_are_argmax_of_scaled() -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn((3, 4, 64), generator=gen)
    greedy = ops.node_select(x)
    assert torch.equal(ops.node_select(x, 0.8, top_k=1, seed=3), greedy)
    assert torch.equal(ops.node_select(x, 0.8, top_p=0.0, seed=3), greedy)


def _topk_support(z: torch.Tensor, k: int) -> torch.Tensor:
    """transformers' TopKLogitsWarper support: every value >= the k-th largest (ties kept)."""
    if not 0 < k < z.shape[-1]:
        return torch.ones_like(z, dtype=torch.bool)
    return z >= torch.topk(z, k).values[..., -1:]


def _processed_probs(x: torch.Tensor, t: float, k: int, p: float) -> torch.Tensor:
    z = x / t
    V = z.numel()
    order = torch.sort(z, descending=True, stable=True).indices
    keep = int(_topk_support(z, k).sum())
    probs = torch.softmax(z[order[:keep]].double(), 0)
    if p < 1.0:
        before = probs.cumsum(0) - probs
        keep = int((before < p).sum())
    out = torch.zeros(V, dtype=torch.float64)
    out[order[:keep]] = torch.softmax(z[order[:keep]].double(), 0)
    return out


@pytest.mark.parametrize(
    ("t", "k", "p"), [(1.0, 0, 1.0), (0.7, 5, 1.0), (1.3, 0, 0.8), (1.0, 6, 0.9)]
)
def test_empirical_distribution_matches_softmax(t: float, k: int, p: float) -> None:
    gen = torch.Generator().manual_seed(2)
    V, draws = 12, 4000
    x = torch.randn(V, generator=gen)
    # Many independent keys at once: rows = nodes of one request.
    logits = x.expand(1, draws, V).contiguous()
    counts = torch.zeros(V, dtype=torch.float64)
    for r in range(5):
        s = ops.node_select(logits, t, k, p, seed=11, round_idx=r)
        counts += torch.bincount(s.flatten().long(), minlength=V).double()
    n = counts.sum()
    expected = _processed_probs(x, t, k, p)
    assert counts[expected == 0].sum() == 0
    # Chi-square goodness of fit over the supported tokens (df <= 11; 40 is p ~ 1e-5).
    m = expected > 0
    chi2 = float((((counts[m] - n * expected[m]) ** 2) / (n * expected[m])).sum())
    assert chi2 < 40, chi2
    tv = 0.5 * float((counts / n - expected).abs().sum())
    assert tv < 0.02 + 3 / math.sqrt(n)


# Exact ties straddling the k-th value: 4 tokens at 1.0 where k = 3 or 4 cuts into them, +0.0
# and -0.0 tied, and -inf entries.
_TIED = [2.0, 1.0, 0.0, 1.0, -1.0, 1.0, -0.0, 1.0, 0.5, -float("inf"), 0.0, -2.0]


@pytest.mark.parametrize("k", range(0, len(_TIED) + 1))
@pytest.mark.parametrize("p", [1.0, 0.9, 0.6])
def test_top_k_ties_match_reference_bitwise(k: int, p: float) -> None:
    gen = torch.Generator().manual_seed(k)
    x = torch.tensor(_TIED).expand(2, 64, -1).contiguous()
    seeds = torch.randint(0, 2**62, (2,), generator=gen)
    rounds = torch.tensor([0, 2**33 + 5])
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        args = (x.to(dtype), torch.tensor([1.0, 0.7]), torch.tensor([k, k]), p, seeds, rounds)
        assert torch.equal(ops.node_select(*args), reference.node_select(*args)), (k, p, dtype)


@pytest.mark.parametrize("k", range(1, len(_TIED) + 1))
def test_top_k_support_is_transformers_rule(k: int) -> None:
    # Every token >= the k-th value is drawn (ties with it included), nothing else is; -inf
    # tokens are never drawn (a -inf k-th value keeps the whole row, where they have no mass).
    x = torch.tensor(_TIED)
    draws = 4000
    logits = x.expand(1, draws, -1).contiguous()
    got = ops.node_select(logits, 4.0, k, seed=5, round_idx=1)
    ref = reference.node_select(logits[:, :200], 4.0, k, seed=5, round_idx=1)  # (slow: a row loop)
    assert torch.equal(got[:, :200], ref)
    support = _topk_support(x / 4.0, k) & (x > -float("inf"))
    assert int(support.sum()) >= min(k, int((x > -float("inf")).sum()))
    drawn = torch.zeros_like(support)
    drawn[got.flatten().long()] = True
    assert torch.equal(drawn, support), (k, drawn.nonzero().flatten(), support.nonzero().flatten())


def test_top_k_with_few_finite_tokens() -> None:
    # k beyond the finite tokens: the k-th value is -inf, the whole row is kept, and only the
    # finite tokens can be drawn; an all -inf row draws the lowest id.
    x = torch.full((1, 500, 40), -float("inf"))
    x[0, :, 7], x[0, :, 30] = 0.5, -0.25
    for p in (1.0, 0.95):
        got = ops.node_select(x, 1.0, 5, p, seed=3)
        assert torch.equal(got, reference.node_select(x, 1.0, 5, p, seed=3))
        assert set(got.flatten().tolist()) == {7, 30}
    dead = torch.full((2, 3, 9), -float("inf"))
    for k, p in [(2, 1.0), (2, 0.5), (0, 1.0), (9, 0.9)]:
        got = ops.node_select(dead, 1.0, k, p, seed=1)
        assert torch.equal(got, reference.node_select(dead, 1.0, k, p, seed=1))
        assert got.eq(0).all()


@pytest.mark.parametrize(("t", "k", "p"), [(1.0, 3, 1.0), (0.8, 4, 1.0), (1.5, 2, 0.9)])
def test_tied_distribution_matches_softmax(t: float, k: int, p: float) -> None:
    # Chi-square over the processed distribution when the k-th value is tied: the tied tokens
    # past k keep their full softmax share.
    x = torch.tensor(_TIED)
    V, draws = x.numel(), 4000
    logits = x.expand(1, draws, V).contiguous()
    counts = torch.zeros(V, dtype=torch.float64)
    for r in range(5):
        s = ops.node_select(logits, t, k, p, seed=13, round_idx=r)
        counts += torch.bincount(s.flatten().long(), minlength=V).double()
    n = counts.sum()
    expected = _processed_probs(x, t, k, p)
    assert int((expected > 0).sum()) > k  # the test is about ties past k
    assert counts[expected == 0].sum() == 0
    m = expected > 0
    chi2 = float((((counts[m] - n * expected[m]) ** 2) / (n * expected[m])).sum())
    assert chi2 < 40, chi2


def test_node_select_validation() -> None:
    x = torch.zeros((2, 3, 5))
    with pytest.raises(ValueError, match="temperature"):
        ops.node_select(x, torch.ones(3))
    with pytest.raises(TypeError, match="top_k"):
        ops.node_select(x, 1.0, torch.ones(2))
    bad = x.clone()
    bad[1, 2, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        ops.node_select(bad)


def test_node_select_opcheck() -> None:
    x = torch.randn((2, 3, 17))
    args = (
        x,
        torch.ones(2),
        torch.full((2,), 4),
        torch.full((2,), 0.9),
        torch.arange(2),
        torch.zeros(2, dtype=torch.int64),
    )
    torch.library.opcheck(torch.ops.difftree.node_select.default, args)
