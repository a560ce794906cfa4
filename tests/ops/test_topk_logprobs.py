"""topk_logprobs: C++ against the reference, exactly, plus hand-checked rows and bad input."""

from __future__ import annotations

import math

import pytest
import torch
from tests.conftest import random_logits

from difftree_rt import ops, reference


@pytest.mark.parametrize("seed", range(300))
def test_matches_reference_random(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    B = 1 + seed % 4
    L = seed % 17
    V = [2, 3, 31, 32, 33, 257, 1000, 50_000][seed % 8]
    k = 1 + int(torch.randint(0, V, (), generator=gen))
    x = random_logits(gen, B, L, V, ties=seed % 3 == 0, neg_inf=seed % 5 == 0)
    tok, lp = ops.topk_logprobs(x, k)
    rtok, rlp = reference.topk_logprobs(x, k)
    assert tok.dtype == torch.int32 and lp.dtype == torch.float32
    assert tok.shape == (B, L, k)
    assert torch.equal(tok, rtok)
    assert torch.equal(lp, rlp)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs_match_reference(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(7)
    x = random_logits(gen, 2, 5, 3000, neg_inf=True).to(dtype)
    tok, lp = ops.topk_logprobs(x, 64)
    rtok, rlp = reference.topk_logprobs(x, 64)
    assert torch.equal(tok, rtok) and torch.equal(lp, rlp)


def test_hand_checked_row() -> None:
    x = torch.tensor([[[1.0, 3.0, 3.0, float("-inf"), 0.0]]])
    tok, lp = ops.topk_logprobs(x, 5)
    # Ties (tokens 1 and 2) go to the lower id; -inf is clamped to -1e4 and ranks last.
    assert tok.tolist() == [[[1, 2, 0, 4, 3]]]
    lse = math.log(2 * math.exp(3.0) + math.exp(1.0) + 1.0)
    expected = [3.0 - lse, 3.0 - lse, 1.0 - lse, 0.0 - lse, -1e4]
    assert lp[0, 0].tolist() == pytest.approx(expected, abs=1e-6)
    assert lp[0, 0, 4].item() == -1e4


def test_sorted_descending_and_normalised() -> None:
    gen = torch.Generator().manual_seed(3)
    x = random_logits(gen, 3, 4, 100)
    tok, lp = ops.topk_logprobs(x, 100)
    assert (lp[..., 1:] <= lp[..., :-1]).all()
    assert torch.allclose(lp.double().exp().sum(-1), torch.ones(3, 4, dtype=torch.float64))
    # Every token appears once per row.
    assert torch.equal(tok.sort(-1).values, torch.arange(100, dtype=torch.int32).expand(3, 4, 100))


def test_l_zero() -> None:
    tok, lp = ops.topk_logprobs(torch.zeros(2, 0, 10), 3)
    assert tok.shape == (2, 0, 3) and lp.shape == (2, 0, 3)


@pytest.mark.parametrize(
    ("bad", "match"),
    [(float("nan"), "NaN"), (float("inf"), r"\+inf")],
)
def test_nan_and_pos_inf_rejected(bad: float, match: str) -> None:
    x = torch.zeros(1, 2, 8)
    x[0, 1, 5] = bad
    with pytest.raises(ValueError, match=f"logits.*{match}"):
        ops.topk_logprobs(x, 2)


def test_all_neg_inf_row_rejected() -> None:
    x = torch.full((1, 1, 4), float("-inf"))
    with pytest.raises(ValueError, match=r"logits.*-inf"):
        ops.topk_logprobs(x, 2)


@pytest.mark.parametrize("k", [0, -1, 9])
def test_k_out_of_range(k: int) -> None:
    with pytest.raises(ValueError, match=r"k: expected a value in \[1, 8\]"):
        ops.topk_logprobs(torch.zeros(1, 1, 8), k)


def test_bad_shape_dtype_layout() -> None:
    with pytest.raises(ValueError, match=r"logits: expected a 3-D tensor \[B, L, V\]"):
        ops.topk_logprobs(torch.zeros(4, 8), 2)
    with pytest.raises(TypeError, match="logits: expected dtype float32 or float16 or bfloat16"):
        ops.topk_logprobs(torch.zeros(1, 2, 8, dtype=torch.int64), 2)
    with pytest.raises(ValueError, match="logits: expected a contiguous tensor"):
        ops.topk_logprobs(torch.zeros(1, 8, 2).transpose(1, 2), 2)
    with pytest.raises(TypeError, match=r"logits: expected a torch\.Tensor"):
        ops.topk_logprobs([[[0.0, 1.0]]], 1)  # type: ignore[arg-type]


def test_unsupported_devices_and_layouts() -> None:
    with pytest.raises(ValueError, match="logits: expected a cpu or cuda tensor, got device meta"):
        ops.topk_logprobs(torch.empty(1, 2, 3, device="meta"), 2)
    with pytest.raises(ValueError, match=r"logits: expected a dense \(strided\) tensor"):
        ops.topk_logprobs(torch.randn(1, 2, 3).to_sparse(), 2)


def test_num_splits_is_ignored_on_cpu_but_validated() -> None:
    x = torch.randn(2, 3, 257)
    ref = ops.topk_logprobs(x, 9)
    for splits in (0, 2, 33, 256):
        tok, lp = ops.topk_logprobs(x, 9, num_splits=splits)
        assert torch.equal(tok, ref[0])
        assert torch.equal(lp.view(torch.int32), ref[1].view(torch.int32))
    for bad in (-1, 257):
        with pytest.raises(ValueError, match="num_splits"):
            ops.topk_logprobs(x, 9, num_splits=bad)
    tok, lp, err = ops.topk_logprobs_flagged(x, 9, num_splits=8)
    assert torch.equal(tok, ref[0]) and (err == 0).all()


def test_topk_workspace_bytes_is_shape_arithmetic() -> None:
    x = torch.empty(1, 15, 151936)
    assert ops.topk_logprobs_workspace_bytes(x, 256, 1) == 0
    assert ops.topk_logprobs_workspace_bytes(x, 256, 8) == 15 * 8 * (8 * 256 + 16)
    auto = ops.topk_logprobs_num_splits(x, 256)
    assert 1 <= auto <= 64
    assert ops.topk_logprobs_workspace_bytes(x, 256, 0) == (
        0 if auto == 1 else 15 * auto * (8 * 256 + 16)
    )
