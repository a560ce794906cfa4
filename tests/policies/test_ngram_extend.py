"""ngram_extend: the per-request, incremental n-gram tables PRESTO reads on the device (the CPU
op here; tests/ops/test_cuda_presto.py compares the CUDA kernel with it). Oracles: the exact
dictionary counts of the reference (``NGramCounts``) and the host ``NGramPrior``."""

from __future__ import annotations

import pytest
import torch

from difftree_rt import ops
from difftree_rt.policies import NGramPrior, presto_table_size
from difftree_rt.reference import policies as pref


def _pairs(keys: torch.Tensor, counts: torch.Tensor) -> list[tuple[int, int]]:
    used = keys != 0
    return sorted(zip(keys[used].tolist(), counts[used].tolist()))


def _tables(B: int, H: int, order: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return (
        torch.zeros(B, H, dtype=torch.int64),
        torch.zeros(B, H, dtype=torch.int32),
        torch.full((B, order - 1), -1, dtype=torch.int64),
    )


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("order", [1, 2, 3, 5])
def test_chunked_extension_equals_counts_of_the_whole_stream(seed: int, order: int) -> None:
    gen = torch.Generator().manual_seed(seed * 10 + order)
    B, T, P = 3, 70, 6
    streams = [torch.randint(0, 5 + 3 * b, (T - 9 * b,), generator=gen).tolist() for b in range(B)]
    H = presto_table_size(order, T)
    keys, counts, hist = _tables(B, H, order)
    dtype = torch.int32 if seed % 2 else torch.int64
    pos = [0] * B
    while min(p - len(s) for p, s in zip(pos, streams)) < 0:
        tok = torch.full((B, P), -7, dtype=dtype)  # entries past num_tokens are ignored
        num = torch.zeros(B, dtype=dtype)
        for b, s in enumerate(streams):
            n = min(int(torch.randint(0, P + 1, (), generator=gen)), len(s) - pos[b])
            tok[b, :n] = torch.tensor(s[pos[b] : pos[b] + n], dtype=dtype)
            num[b] = n
            pos[b] += n
        ops.ngram_extend(keys, counts, hist, tok, num, order)
    for b, s in enumerate(streams):
        want = NGramPrior(order)
        want.sync(s)
        assert _pairs(keys[b], counts[b]) == _pairs(want.keys, want.counts)
        exact = pref.NGramCounts(s, order)
        assert int(counts[b].sum()) == 2 * sum(exact.full.values())
        assert hist[b].tolist() == ([-1] * order + s)[len(s) + 1 :][: order - 1]


def test_short_streams_keep_left_padded_history() -> None:
    keys, counts, hist = _tables(2, 64, 4)
    ops.ngram_extend(keys, counts, hist, torch.tensor([[5, 0], [6, 7]]), torch.tensor([1, 2]), 4)
    assert hist.tolist() == [[-1, -1, 5], [-1, 6, 7]]
    ops.ngram_extend(keys, counts, hist, torch.tensor([[8], [9]]), torch.tensor([0, 1]), 4)
    assert hist.tolist() == [[-1, -1, 5], [6, 7, 9]]
    # Request 0 saw one token: one unigram + its total; request 1: 1 + 2 + 3 n-grams, twice.
    assert int(counts[0].sum()) == 2 and int(counts[1].sum()) == 12


def test_order_one_has_no_history() -> None:
    keys, counts, hist = _tables(1, 16, 1)
    assert hist.shape == (1, 0)
    ops.ngram_extend(keys, counts, hist, torch.tensor([[3, 3, 4]]), torch.tensor([3]), 1)
    assert sorted(counts[0][counts[0] > 0].tolist()) == [1, 2, 3]  # c(4), c(3), c(⊥)


def test_full_table_is_an_error() -> None:
    keys, counts, hist = _tables(1, 4, 2)
    with pytest.raises(ValueError, match="full"):
        ops.ngram_extend(keys, counts, hist, torch.tensor([[1, 2, 3, 4]]), torch.tensor([4]), 2)


@pytest.mark.parametrize(
    "change,exc,match",
    [
        (dict(keys=torch.zeros(2, 16, dtype=torch.int64)), ValueError, "keys"),
        (dict(keys=torch.zeros(1, 12, dtype=torch.int64)), ValueError, "power-of-two"),
        (dict(keys=torch.zeros(16, dtype=torch.int64)), ValueError, r"keys.*\[B, H\]"),
        (dict(keys=torch.zeros(1, 16, dtype=torch.int32)), TypeError, "keys"),
        (dict(counts=torch.zeros(1, 8, dtype=torch.int32)), ValueError, "counts"),
        (dict(counts=torch.zeros(1, 16, dtype=torch.int64)), TypeError, "counts"),
        (dict(history=torch.full((1, 3), -1, dtype=torch.int64)), ValueError, "history"),
        (dict(history=torch.full((1, 2), -1, dtype=torch.int32)), TypeError, "history"),
        (dict(history=torch.tensor([[4, -1]])), ValueError, "history"),
        (dict(history=torch.tensor([[-2, 1]])), ValueError, "history"),
        (dict(tokens=torch.tensor([1, 2])), ValueError, "tokens"),
        (dict(tokens=torch.tensor([[1.0, 2.0]])), TypeError, "tokens"),
        (dict(tokens=torch.tensor([[1, -3]])), ValueError, "tokens"),
        (dict(num_tokens=torch.tensor([3])), ValueError, "num_tokens"),
        (dict(num_tokens=torch.tensor([-1])), ValueError, "num_tokens"),
        (dict(num_tokens=torch.tensor([1, 1])), ValueError, "num_tokens"),
        (dict(order=0), ValueError, "order"),
        (dict(order=9), ValueError, "order"),
        (dict(overflow=torch.zeros(2, dtype=torch.int32)), ValueError, "overflow"),
    ],
)
def test_bad_arguments_name_the_argument(change: dict, exc: type, match: str) -> None:
    args = dict(
        keys=torch.zeros(1, 16, dtype=torch.int64),
        counts=torch.zeros(1, 16, dtype=torch.int32),
        history=torch.full((1, 2), -1, dtype=torch.int64),
        tokens=torch.tensor([[1, 2]]),
        num_tokens=torch.tensor([2]),
        order=3,
        overflow=None,
    )
    args.update(change)
    before = args["keys"].clone()
    with pytest.raises(exc, match=match):
        ops.ngram_extend(**args)
    assert torch.equal(args["keys"], before)  # validation errors change nothing


def test_presto_table_size_never_fills() -> None:
    # The worst case: every n-gram distinct (a stream of distinct tokens).
    for order, T in ((1, 1), (3, 100), (8, 37)):
        H = presto_table_size(order, T)
        keys, counts, hist = _tables(1, H, order)
        ops.ngram_extend(keys, counts, hist, torch.arange(T)[None], torch.tensor([T]), order)
        assert int((keys != 0).sum()) <= H // 2
