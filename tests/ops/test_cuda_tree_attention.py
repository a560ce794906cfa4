"""CUDA tree_attention against the fp32 CPU op / PyTorch reference: odd sizes, GQA groups, both
head dims and dtypes, split-KV on/off, the chain path, padding rows, strided inputs, the model
backend, and CUDA-graph capture + replay with new device-side prefix_len / num_nodes / anc."""

from __future__ import annotations

import pytest
import torch
from tests.ops.tree_attention_cases import (
    assert_within_torch_error,
    make_case,
    random_tree,
    reference,
)

from difftree_rt import build_info, ops
from difftree_rt.models import tree_attention as ta_mod
from difftree_rt.models import tree_attention_cuda

pytestmark = pytest.mark.cuda


@pytest.fixture(autouse=True)
def _needs_cuda_build() -> None:
    if not build_info()["cuda_compiled"]:
        pytest.skip("difftree_rt was built without CUDA kernels")


def run(c, **kw):
    return ops.tree_attention(c.q, c.k, c.v, c.prefix_len, c.anc, c.num_nodes, c.scale, **kw)


def check(c_gpu, got, *, k=2.0, floor=2e-3) -> None:
    """Kernel vs the exact (fp32) result, within k x PyTorch's own bf16/fp16 error + floor; and
    vs the CPU op (the oracle) run on the same rounded inputs."""
    assert got.shape == c_gpu.q.shape and got.dtype == c_gpu.q.dtype
    assert torch.isfinite(got).all()
    assert_within_torch_error(got, c_gpu, k=k, floor=floor)
    B, H, N, D = c_gpu.q.shape
    if B * H * N * (int(c_gpu.prefix_len.max()) + N) * D > 2e9:
        return  # the CPU oracle would take too long; the fp32 reference above covers it
    cpu = run(c_gpu.to("cpu", torch.float32))
    tol = 2e-2 if c_gpu.q.dtype == torch.bfloat16 else 4e-3
    torch.testing.assert_close(got.float().cpu(), cpu, atol=tol, rtol=tol)


# (B, H_q, H_kv, N, D, prefixes)
SIZES = [
    (1, 4, 2, 1, 64, [0]),
    (1, 4, 2, 1, 128, [1]),
    (2, 4, 2, 7, 64, [63, 64]),
    (2, 4, 2, 17, 128, [65, 0]),
    (1, 32, 8, 33, 128, [300]),
    (3, 32, 8, 64, 128, [1000, 5, 4097]),
    (1, 32, 8, 70, 64, [127]),
    (1, 8, 8, 100, 128, [2000]),
    (2, 16, 2, 129, 64, [31, 3000]),
    (1, 32, 8, 257, 128, [513]),
    (1, 6, 1, 45, 128, [77]),
    (1, 32, 8, 1024, 128, [8192]),
]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("B", "H_q", "H_kv", "N", "D", "prefixes"), SIZES)
@pytest.mark.parametrize("num_splits", [1, 0, 3])
def test_matches_reference(dtype, B, H_q, H_kv, N, D, prefixes, num_splits) -> None:
    c = make_case(N * 7 + D + B, B, H_q, H_kv, N, D, prefixes).to("cuda", dtype)
    check(c, run(c, num_splits=num_splits))


@pytest.mark.parametrize("N", [14, 20, 40])
@pytest.mark.parametrize("num_splits", [1, 5])
def test_padding_rows(N, num_splits) -> None:
    c = make_case(N, 2, 32, 8, N, 128, [100, 7], sparse=True).to("cuda", torch.bfloat16)
    assert (c.num_nodes.cpu() < N).all()
    check(c, run(c, num_splits=num_splits))


@pytest.mark.parametrize(("N", "D"), [(1, 64), (16, 128), (33, 64), (64, 128), (200, 128)])
@pytest.mark.parametrize("num_splits", [1, 0])
def test_chain_path(N, D, num_splits) -> None:
    c = make_case(N + 1, 2, 32, 8, N, D, [500, 3], chain=True).to("cuda", torch.bfloat16)
    got = run(c, is_chain=True, num_splits=num_splits)
    check(c, got)  # the chain's bitmask through the reference == causal
    no_anc = ops.tree_attention(c.q, c.k, c.v, c.prefix_len, None, None, c.scale)
    torch.testing.assert_close(no_anc, got, atol=0, rtol=0)
    tree_path = run(c, num_splits=num_splits)  # the bitmask path on a chain: same math
    torch.testing.assert_close(tree_path, got, atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize("splits", [2, 7, 64])
def test_split_kv_agrees_with_single_pass(splits) -> None:
    c = make_case(11, 2, 32, 8, 64, 128, [4000, 130]).to("cuda", torch.bfloat16)
    one = run(c, num_splits=1)
    many = run(c, num_splits=splits)
    # Both round an fp32 result to bf16 once, but merge partial softmaxes in a different order:
    # a few outputs land one bf16 ulp apart (up to 2^-6 at |x| in [2, 4)).
    torch.testing.assert_close(many.float(), one.float(), atol=2e-2, rtol=1e-2)
    check(c, many)  # the bf16 output itself (check() asserts q's dtype)


def test_strided_q_and_hf_layout() -> None:
    c = make_case(12, 2, 32, 8, 33, 128, [77, 500]).to("cuda", torch.bfloat16)
    q_view = c.q.transpose(1, 2).contiguous().transpose(1, 2)  # HF's [B, N, H, D] storage
    got = ops.tree_attention(q_view, c.k, c.v, c.prefix_len, c.anc, c.num_nodes, c.scale)
    torch.testing.assert_close(got, run(c), atol=0, rtol=0)
    assert got.transpose(1, 2).is_contiguous()


def test_int32_lengths() -> None:
    c = make_case(13, 2, 4, 2, 20, 64, [9, 300]).to("cuda", torch.float16)
    got = ops.tree_attention(c.q, c.k, c.v, c.prefix_len.int(), c.anc, c.num_nodes.long(), c.scale)
    torch.testing.assert_close(got, run(c), atol=0, rtol=0)


def test_unsupported_shapes_raise() -> None:
    c = make_case(14, 1, 4, 2, 5, 96, [3]).to("cuda", torch.bfloat16)
    with pytest.raises(NotImplementedError, match="head_dim"):
        run(c)
    c = make_case(14, 1, 4, 2, 5, 64, [3]).to("cuda")
    with pytest.raises(NotImplementedError, match="bfloat16"):
        run(c)


def test_model_backend_uses_kernel() -> None:
    c = make_case(15, 2, 32, 8, 33, 128, [40, 900]).to("cuda", torch.bfloat16)
    ref = ta_mod.tree_attention(c.q, c.k, c.v, c.prefix_len, c.anc, c.num_nodes, c.scale)
    tree_attention_cuda.enable()
    try:
        assert (
            ta_mod.get_tree_attention_backend() is tree_attention_cuda.cuda_tree_attention_backend
        )
        got = ta_mod.tree_attention(c.q, c.k, c.v, c.prefix_len, c.anc, c.num_nodes, c.scale)
        causal = ta_mod.tree_attention(c.q, c.k, c.v, c.prefix_len, None, None, c.scale)
        # fp32 tensors: the backend declines and the reference runs.
        c32 = c.to("cuda", torch.float32)
        got32 = ta_mod.tree_attention(
            c32.q, c32.k, c32.v, c32.prefix_len, c32.anc, c32.num_nodes, c32.scale
        )
    finally:
        tree_attention_cuda.disable()
    torch.testing.assert_close(got, run(c), atol=0, rtol=0)
    torch.testing.assert_close(causal, run(c, is_chain=True), atol=0, rtol=0)
    # The reference path rounds bf16 at other points (H100 run: 3 of 270336 outputs 0.0244 apart).
    torch.testing.assert_close(got.float(), ref.float(), atol=3e-2, rtol=2e-2)
    torch.testing.assert_close(got32, reference(c32), atol=0, rtol=0)


@pytest.mark.parametrize(("N", "num_splits"), [(64, 0), (64, 1), (33, 4), (256, 0)])
def test_cuda_graph_replay(N, num_splits) -> None:
    B, H_q, H_kv, D = 2, 32, 8, 128
    S = 3000 + N
    dtype = torch.bfloat16
    base = make_case(20, B, H_q, H_kv, N, D, [S - N - 5, 10], extra_rows=5).to("cuda", dtype)
    q, k, v = base.q.clone(), base.k.clone(), base.v.clone()
    prefix, anc, nodes = base.prefix_len.clone(), base.anc.clone(), base.num_nodes.clone()
    args = (q, k, v, prefix, anc, nodes, base.scale)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        ops.tree_attention(*args, num_splits=num_splits)  # warm-up
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = ops.tree_attention(*args, num_splits=num_splits)
    for seed, prefixes in ((21, [7, S - N]), (22, [0, 1234]), (23, [2999, 64])):
        gen = torch.Generator().manual_seed(seed)
        new_anc, new_nodes = random_tree(gen, B, N, sparse=seed == 22)
        q.copy_(torch.randn(q.shape, generator=gen).to(dtype))
        k.copy_(torch.randn(k.shape, generator=gen).to(dtype))
        v.copy_(torch.randn(v.shape, generator=gen).to(dtype))
        prefix.copy_(torch.tensor(prefixes))
        anc.copy_(new_anc)
        nodes.copy_(new_nodes)
        graph.replay()
        eager = ops.tree_attention(*args, num_splits=num_splits)
        torch.testing.assert_close(out, eager, atol=0, rtol=0)
        c = type(base)(q, k, v, prefix, anc, nodes, base.scale)
        assert_within_torch_error(out, c)


def test_reference_consistency_large() -> None:
    # Qwen3-8B heads at 8k context and 64 nodes, the benchmark's headline shape.
    c = make_case(30, 1, 32, 8, 64, 128, [8192]).to("cuda", torch.bfloat16)
    got = run(c)
    exact = reference(c.to("cuda", torch.float32))
    assert (got.float() - exact).abs().max().item() < 2e-2
