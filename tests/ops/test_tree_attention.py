"""tree_attention on the CPU (the oracle of the CUDA kernel) against the PyTorch reference:
DDTree trees from ops.ddtree_select, GQA 4/2 and 32/8, D 64 and 128, prefixes 0..300, N 1..70,
padding rows, chains; fp32 within k x PyTorch's own fp32 error (tests/tolerance.py), bf16/fp16
within k x PyTorch's own low-precision error."""

from __future__ import annotations

import pytest
import torch
from tests.ops.tree_attention_cases import (
    assert_fp32_close,
    assert_within_torch_error,
    chain_anc,
    make_case,
    max_err,
    reference,
)

from difftree_rt import ops
from difftree_rt.models import tree_attention as ta_mod


def run(c, **kw):
    return ops.tree_attention(c.q, c.k, c.v, c.prefix_len, c.anc, c.num_nodes, c.scale, **kw)


# (H_q, H_kv, D, N, prefixes)
CASES = [
    (4, 2, 64, 1, [0]),
    (4, 2, 64, 2, [1, 7]),
    (4, 2, 128, 17, [0, 300]),
    (4, 2, 64, 32, [63, 64]),
    (4, 2, 128, 33, [65, 0]),
    (4, 2, 64, 70, [129]),
    (32, 8, 128, 7, [300]),
    (32, 8, 64, 33, [5, 200]),
    (32, 8, 128, 64, [100]),
    (8, 8, 64, 5, [3]),
    (6, 1, 64, 9, [11, 2, 40]),
]


@pytest.mark.parametrize(("H_q", "H_kv", "D", "N", "prefixes"), CASES)
def test_fp32_matches_reference(H_q, H_kv, D, N, prefixes) -> None:
    c = make_case(N * 100 + D + H_q, len(prefixes), H_q, H_kv, N, D, prefixes)
    got = run(c)
    assert got.shape == c.q.shape and got.dtype == torch.float32
    assert_fp32_close(got, c)


@pytest.mark.parametrize("N", [14, 21, 40])
def test_padding_rows(N) -> None:
    # A lattice too small for the budget: trees end in padding rows (self bit only).
    c = make_case(N, 2, 4, 2, N, 64, [10, 0], sparse=True)
    assert (c.num_nodes < N).all()
    assert_fp32_close(run(c), c)


@pytest.mark.parametrize("N", [1, 5, 32, 45])
def test_chain_path_matches_causal_reference(N) -> None:
    c = make_case(7 + N, 2, 4, 2, N, 64, [20, 3], chain=True)
    assert_fp32_close(run(c, is_chain=True), c, causal=True)
    # tree_anc=None is the causal path too, and a chain's bitmask gives the same answer.
    no_anc = ops.tree_attention(c.q, c.k, c.v, c.prefix_len, None, None, c.scale)
    assert_fp32_close(no_anc, c, causal=True)
    assert torch.equal(c.anc, chain_anc(2, N))
    assert_fp32_close(run(c), c, causal=True)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    ("H_q", "H_kv", "D", "N", "prefixes"), [CASES[2], CASES[5], CASES[7], CASES[10]]
)
def test_low_precision_within_torch_error(dtype, H_q, H_kv, D, N, prefixes) -> None:
    c = make_case(N + D, len(prefixes), H_q, H_kv, N, D, prefixes).to("cpu", dtype)
    got = run(c)
    assert got.dtype == dtype
    assert_within_torch_error(got, c, k=1.5, floor=1e-3)


@pytest.mark.parametrize("seed", range(12))
def test_fuzz_vs_reference(seed) -> None:
    gen = torch.Generator().manual_seed(seed)
    H_kv = [1, 2, 8][seed % 3]
    H_q = H_kv * [1, 2, 4][(seed // 3) % 3]
    D = [64, 128, 24][seed % 3]
    N = int(torch.randint(1, 71, (1,), generator=gen))
    B = 1 + seed % 3
    prefixes = torch.randint(0, 301, (B,), generator=gen).tolist()
    c = make_case(1000 + seed, B, H_q, H_kv, N, D, prefixes, sparse=seed % 4 == 0)
    assert_fp32_close(run(c), c)


def test_strided_inputs_and_output_layout() -> None:
    c = make_case(3, 2, 4, 2, 9, 64, [5, 17])
    q_bnhd = c.q.transpose(1, 2).contiguous()  # [B, N, H, D] as HF produces it
    q_view = q_bnhd.transpose(1, 2)
    assert not q_view.is_contiguous()
    got = ops.tree_attention(q_view, c.k, c.v, c.prefix_len, c.anc, c.num_nodes, c.scale)
    assert_fp32_close(got, c)
    # The output is a [B, N, H, D] buffer seen as [B, H, N, D]: HF's transpose back is free.
    assert got.transpose(1, 2).is_contiguous()


def test_int32_lengths_and_uint32_anc() -> None:
    c = make_case(4, 2, 4, 2, 40, 64, [9, 31])
    got = ops.tree_attention(
        c.q,
        c.k,
        c.v,
        c.prefix_len.to(torch.int32),
        c.anc.view(torch.uint32),
        c.num_nodes.to(torch.int64),
        c.scale,
    )
    assert_fp32_close(got, c)


def test_argument_errors() -> None:
    c = make_case(5, 2, 4, 2, 8, 64, [3, 4])
    with pytest.raises(ValueError, match="k_cache"):
        ops.tree_attention(c.q, c.k[:, :, :, :32], c.v, c.prefix_len, c.anc, None, 0.1)
    with pytest.raises(ValueError, match="H_kv"):
        ops.tree_attention(c.q[:, :3], c.k, c.v, c.prefix_len, c.anc, None, 0.1)
    with pytest.raises(ValueError, match="tree_anc"):
        ops.tree_attention(c.q, c.k, c.v, c.prefix_len, c.anc[:, :4], None, 0.1)
    with pytest.raises(TypeError, match="v_cache"):
        ops.tree_attention(c.q, c.k, c.v.double(), c.prefix_len, c.anc, None, 0.1)
    with pytest.raises(ValueError, match="prefix_len"):
        ops.tree_attention(c.q, c.k, c.v, torch.tensor([3, 100]), c.anc, None, 0.1)
    with pytest.raises(ValueError, match="prefix_len"):
        ops.tree_attention(c.q, c.k, c.v, torch.tensor([-1, 0]), c.anc, None, 0.1)
    with pytest.raises(ValueError, match="num_nodes"):
        ops.tree_attention(c.q, c.k, c.v, c.prefix_len, c.anc, torch.tensor([9, 1]), 0.1)
    with pytest.raises(ValueError, match="scale"):
        ops.tree_attention(c.q, c.k, c.v, c.prefix_len, c.anc, None, float("nan"))
    with pytest.raises(ValueError, match="num_splits"):
        ops.tree_attention(c.q, c.k, c.v, c.prefix_len, c.anc, None, 0.1, num_splits=-1)
    with pytest.raises(ValueError, match="last dimension"):
        ops.tree_attention(c.q.transpose(2, 3), c.k, c.v, c.prefix_len, c.anc, None, 0.1)


def test_workspace_sizing() -> None:
    from difftree_rt._ext import ext

    C = ext()
    # Qwen3-8B heads, 64 nodes, 8k context: several splits and a matching workspace.
    s = C.tree_attention_num_splits(1, 32, 8, 64, 8192 + 64)
    assert 2 <= s <= 64
    assert (
        C.tree_attention_workspace_bytes(1, 32, 8, 64, 128, 8192 + 64, 0) == s * 32 * 64 * 129 * 4
    )
    assert C.tree_attention_workspace_bytes(1, 32, 8, 64, 128, 8192 + 64, 1) == 0
    assert C.tree_attention_num_splits(1, 32, 8, 64, 300) == 1  # short cache: no split
    assert C.tree_attention_num_splits(64, 32, 8, 1024, 40000) == 1  # enough CTAs already


def test_opcheck() -> None:
    c = make_case(6, 2, 4, 2, 5, 64, [3, 0])
    args = (c.q, c.k, c.v, c.prefix_len, c.anc, c.num_nodes, c.scale, False, 0)
    torch.library.opcheck(torch.ops.difftree.tree_attention.default, args)
    args = (c.q, c.k, c.v, c.prefix_len, None, None, c.scale, True, 0)
    torch.library.opcheck(torch.ops.difftree.tree_attention.default, args)


def test_backend_declines_on_cpu() -> None:
    from difftree_rt.models import tree_attention_cuda

    c = make_case(8, 1, 4, 2, 3, 64, [2])
    assert ta_mod.get_tree_attention_backend() is None  # importing installs nothing
    backend = tree_attention_cuda.cuda_tree_attention_backend
    assert backend(c.q, c.k, c.v, c.prefix_len, c.anc, c.num_nodes, c.scale) is None
    tree_attention_cuda.enable()
    try:
        assert ta_mod.get_tree_attention_backend() is backend
        # The model-path entry still gives the reference's answer on CPU (the backend declines).
        got = ta_mod.tree_attention(c.q, c.k, c.v, c.prefix_len, c.anc, c.num_nodes, c.scale)
    finally:
        tree_attention_cuda.disable()
    assert ta_mod.get_tree_attention_backend() is None
    assert max_err(got, reference(c)) == 0.0
