"""cuda/topk_logprobs.cu (one CTA per row and the split-row path), tree_walk.cu and
kv_commit.cu run on the host through the CUDA emulator (tools/cuda_emu) against the CPU ops:
exact tokens and bit-equal log-probs, walks and committed caches (fp32 / bf16 / fp16 inputs,
ties, -inf, NaN / Inf rows flagged). The third session's compile-only top-K refactor
(block_max_and_bad / write_bad_row) is covered here at the logic level."""

from __future__ import annotations

import pytest
import torch
from emu_kernels import EmuKernels
from tests.conftest import random_logits
from tests.ops.kernel_cases import (
    kv_commit_case,
    node_select_case,
    node_select_tie_case,
    tree_walk_case,
)

from difftree_rt import ops, reference


@pytest.fixture(scope="module")
def emu(emu_lib) -> EmuKernels:  # type: ignore[no-untyped-def]
    kernels = EmuKernels(emu_lib)
    kernels.config(threads=0, schedule=2)  # random thread order between barriers
    return kernels


def _topk_equal(x: torch.Tensor, k: int, got) -> None:  # type: ignore[no-untyped-def]
    tok_c, lp_c = ops.topk_logprobs(x, k)
    tok_e, lp_e, err_e = got
    assert not bool(err_e.any())
    assert torch.equal(tok_c, tok_e)
    assert torch.equal(lp_c.view(torch.int32), lp_e.view(torch.int32))  # -0.0 included


TOPK_CASES = [
    # (B, L, V, k)
    (1, 1, 1, 1),
    (1, 3, 31, 1),
    (2, 5, 33, 7),
    (3, 1, 1000, 1000),
    (4, 3, 4099, 513),
    (1, 2, 20000, 256),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("B", "L", "V", "k"), TOPK_CASES)
@pytest.mark.parametrize("kind", ["plain", "ties", "neg_inf"])
def test_topk_one_cta_per_row(emu: EmuKernels, dtype, B, L, V, k, kind) -> None:  # type: ignore[no-untyped-def]
    gen = torch.Generator().manual_seed(B * 7919 + L * 31 + V + k)
    x = random_logits(gen, B, L, V, ties=kind == "ties", neg_inf=kind == "neg_inf").to(dtype)
    _topk_equal(x, k, emu.topk_logprobs(x, k, 1))


@pytest.mark.parametrize("num_splits", [2, 8, 33])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    ("B", "L", "V", "k"), [(1, 3, 31, 1), (2, 4, 5000, 64), (1, 2, 20000, 256)]
)
@pytest.mark.parametrize("kind", ["plain", "ties"])
def test_topk_split_rows(emu: EmuKernels, num_splits, dtype, B, L, V, k, kind) -> None:  # type: ignore[no-untyped-def]
    # The split path sums the f64 exps in another order, so a log-prob may sit one f32 ulp of
    # the lse away (docs/NOTES.md); these seeds are exact.
    gen = torch.Generator().manual_seed(B * 7919 + L * 31 + V + k + num_splits)
    x = random_logits(gen, B, L, V, ties=kind == "ties").to(dtype)
    tok_c, lp_c = ops.topk_logprobs(x, k)
    tok_e, lp_e, err = emu.topk_logprobs(x, k, num_splits)
    assert not bool(err.any())
    assert torch.equal(tok_c, tok_e)
    assert torch.equal(lp_c.view(torch.int32), lp_e.view(torch.int32))


@pytest.mark.parametrize("num_splits", [1, 2, 8])
def test_topk_flags_bad_rows(emu: EmuKernels, num_splits: int) -> None:
    x = torch.randn(2, 3, 1000)
    x[0, 1, 7] = float("nan")
    x[0, 2, 999] = float("nan")
    x[1, 2, :] = float("-inf")
    x[1, 0, 500] = float("inf")
    x[1, 1, :900] = float("-inf")
    tok, lp, err = emu.topk_logprobs(x, 5, num_splits)
    assert err.tolist() == [[0, 1, 1], [1, 0, 2]]  # 1: NaN / +inf, 2: no finite logit
    for b, d in ((0, 1), (0, 2), (1, 0), (1, 2)):
        assert tok[b, d].tolist() == [0, 1, 2, 3, 4] and bool((lp[b, d] == -1e4).all())
    for b, d in ((0, 0), (1, 1)):
        tok_c, lp_c = ops.topk_logprobs(x[b : b + 1, d : d + 1], 5)
        assert torch.equal(tok_c[0, 0], tok[b, d])
        assert torch.equal(lp_c[0, 0].view(torch.int32), lp[b, d].view(torch.int32))


@pytest.mark.parametrize("seed", range(30))
def test_tree_walk(emu: EmuKernels, seed: int) -> None:
    tree, choice, stops, remaining = tree_walk_case(seed)
    cpu = ops.tree_walk(tree, choice, stops, remaining)
    got = emu.tree_walk(tree, choice, stops, remaining)
    for c, g in zip(cpu, got, strict=True):
        assert torch.equal(c, g.to(c.dtype)), seed


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("D", [64, 7])  # 16-byte rows and byte rows
def test_kv_commit(emu: EmuKernels, dtype: torch.dtype, D: int) -> None:
    caches, base, path, accepted = kv_commit_case(D, dtype, H=2, num_caches=3)
    emulated = [c.clone() for c in caches]
    ops.kv_commit(caches, base, path, accepted)
    emu.kv_commit(emulated, base, path, accepted)
    for c, e in zip(caches, emulated, strict=True):
        assert torch.equal(c, e)


NODE_CASES = [(1, 1, 1), (2, 3, 31), (1, 17, 1000), (3, 9, 4099), (1, 3, 20000)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("B", "N", "V"), NODE_CASES)
@pytest.mark.parametrize(
    ("t", "k", "p"),
    [(0.0, 0, 1.0), (1.0, 0, 1.0), (0.7, 50, 1.0), (1.0, 0, 0.9), (1.3, 20, 0.8), (0.5, 1, 0.0)],
)
def test_node_select(emu: EmuKernels, dtype, B, N, V, t, k, p) -> None:  # type: ignore[no-untyped-def]
    # Philox draws, temperature, top-k (every tie with the k-th value kept), top-p.
    args = node_select_case(dtype, B, N, V, t, k, p)
    assert torch.equal(ops.node_select(*args), emu.node_select(*args))


@pytest.mark.parametrize("kind", ["levels", "zeros", "neg_inf"])
@pytest.mark.parametrize(("B", "N", "V"), [(2, 3, 31), (1, 5, 1000), (2, 2, 4099)])
@pytest.mark.parametrize(("t", "k", "p"), [(1.0, 7, 1.0), (0.7, 300, 1.0), (1.3, 20, 0.8)])
def test_node_select_ties(emu: EmuKernels, kind, B, N, V, t, k, p) -> None:  # type: ignore[no-untyped-def]
    # The k-th value shared by many tokens: the kernel's value-only radix select keeps them all,
    # as the CPU op and the reference.
    args = node_select_tie_case(kind, B, N, V, t, k, p)
    cpu = ops.node_select(*args)
    assert torch.equal(cpu, reference.node_select(*args))
    assert torch.equal(cpu, emu.node_select(*args))
