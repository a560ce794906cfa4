"""CUDA tree_attention's attention variants on a GPU (the same cases run on the CPU through the
emulator in tests/emu/test_emu_tree_attention.py): sliding windows by position over trees and
causal rows, attention sinks, ring caches with prefix_len far past S, D_v != D_k (192 / 128),
split-KV, the model backend passing the variant through, and CUDA-graph replay with new
device-side prefix_len / depth / anc values."""

from __future__ import annotations

import pytest
import torch
from tests.ops.attention_variant_cases import (
    VariantCase,
    assert_variant_close,
    discriminates,
    make_variant_case,
    random_parent_tree,
)

from difftree_rt import build_info, ops
from difftree_rt.models import tree_attention as ta_mod
from difftree_rt.models import tree_attention_cuda

pytestmark = pytest.mark.cuda


@pytest.fixture(autouse=True)
def _needs_cuda_build() -> None:
    if not build_info()["cuda_compiled"]:
        pytest.skip("difftree_rt was built without CUDA kernels")


def run(c: VariantCase, num_splits: int = 0, **kw: object) -> torch.Tensor:
    args = {**c.variant(), **kw}
    return ops.tree_attention(
        c.q, c.k, c.v, c.prefix_len, c.anc, c.num_nodes, c.scale, num_splits=num_splits,
        **args,  # type: ignore[arg-type]
    )  # fmt: skip


def check(c: VariantCase, got: torch.Tensor) -> None:
    """The FA-style rule, and the CPU op (the oracle) on the same rounded inputs."""
    assert_variant_close(got, c)
    B, H, N, D = c.q.shape
    if c.window == 0 and B * H * N * (int(c.prefix_len.max()) + N) * D > 2e9:
        return  # the CPU oracle would take too long; the fp32 reference above covers it
    cpu = run(c.to("cpu", torch.float32))
    tol = 2e-2 if c.q.dtype == torch.bfloat16 else 4e-3
    torch.testing.assert_close(got.float().cpu(), cpu, atol=tol, rtol=tol)


# (B, H_q, H_kv, N, D_k, D_v, prefixes, window, sinks, ring)
CASES = [
    (2, 64, 8, 16, 64, 64, [4096, 100], 128, True, False),  # gpt-oss-20b, sliding layer
    (2, 64, 8, 64, 64, 64, [4096, 7], 128, True, True),  # ... as a ring
    (1, 64, 8, 16, 64, 64, [32768], 0, True, False),  # gpt-oss full layer: sinks only
    (2, 32, 8, 33, 128, 128, [3000, 1], 4, False, False),  # window below the tree's depth
    (1, 32, 8, 33, 128, 128, [900], 1, True, False),  # W = 1
    (3, 16, 2, 24, 192, 128, [1000, 5, 300], 0, False, False),  # DeepSeek-V3 latent heads
    (2, 16, 2, 24, 192, 128, [1000, 64], 96, True, True),
    (1, 8, 8, 100, 64, 64, [2000], 64, False, True),
]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("num_splits", [1, 0, 3])
@pytest.mark.parametrize(
    ("B", "H_q", "H_kv", "N", "D_k", "D_v", "prefixes", "W", "sinks", "ring"), CASES
)
def test_variants(dtype, num_splits, B, H_q, H_kv, N, D_k, D_v, prefixes, W, sinks, ring) -> None:  # type: ignore[no-untyped-def]
    ring_prefixes = [p * 7 + 12345 for p in prefixes] if ring else prefixes  # far past S
    c = make_variant_case(N + D_k + B, B, H_q, H_kv, N, D_k, D_v, ring_prefixes, window=W,
                          sinks=sinks, ring=ring, reach=2).to("cuda", dtype)  # fmt: skip
    got = run(c, num_splits)
    check(c, got)
    if W > 0 and not ring:
        assert discriminates(c, got, window=0)


@pytest.mark.parametrize(("N", "W"), [(1, 1), (64, 16), (256, 64)])
def test_window_causal_rows(N, W) -> None:  # type: ignore[no-untyped-def]
    # Prefill / chains: positions are row indices; the later query tiles skip tree tiles.
    c = make_variant_case(N, 1, 64, 8, N, 64, 64, [5000], window=W, sinks=True, causal=True)
    c = c.to("cuda", torch.bfloat16)
    got = run(c)
    check(c, got)
    chain = ops.tree_attention(c.q, c.k, c.v, c.prefix_len, None, None, c.scale, is_chain=True,
                               window=W, sinks=c.sinks)  # fmt: skip
    torch.testing.assert_close(chain, got, atol=0, rtol=0)


@pytest.mark.parametrize("splits", [2, 7, 64])
def test_split_kv_merges_the_sink_once(splits) -> None:  # type: ignore[no-untyped-def]
    c = make_variant_case(11, 2, 64, 8, 64, 64, 64, [30000, 130], window=2000, sinks=True)
    c = c.to("cuda", torch.bfloat16)
    one, many = run(c, 1), run(c, splits)
    torch.testing.assert_close(many.float(), one.float(), atol=2e-2, rtol=1e-2)
    check(c, many)


def test_model_backend_passes_the_variant() -> None:
    c = make_variant_case(15, 2, 64, 8, 16, 64, 64, [40, 900], window=128, sinks=True)
    c = c.to("cuda", torch.bfloat16)
    bf16_sinks = c.sinks.to(torch.bfloat16)  # type: ignore[union-attr]  # a bf16 model's s_aux
    kw = {"depth": c.depth, "window": c.window, "sinks": bf16_sinks, "ring": False}
    tree_attention_cuda.enable()
    try:
        got = ta_mod.tree_attention(c.q, c.k, c.v, c.prefix_len, c.anc, c.num_nodes, c.scale, **kw)
        latent = make_variant_case(16, 1, 8, 2, 8, 192, 128, [50], window=20).to(
            "cuda", torch.bfloat16
        )
        got_latent = ta_mod.tree_attention(
            latent.q, latent.k, latent.v, latent.prefix_len, latent.anc, latent.num_nodes,
            latent.scale, **latent.variant(),
        )  # fmt: skip
        odd = make_variant_case(17, 1, 4, 2, 8, 96, 96, [50], window=20).to("cuda", torch.bfloat16)
        declined = tree_attention_cuda.cuda_tree_attention_backend(
            odd.q, odd.k, odd.v, odd.prefix_len, odd.anc, odd.num_nodes, odd.scale,
            **odd.variant(),
        )  # fmt: skip
    finally:
        tree_attention_cuda.disable()
    want = run(c, sinks=bf16_sinks.float())
    torch.testing.assert_close(got, want, atol=0, rtol=0)
    torch.testing.assert_close(got_latent, run(latent), atol=0, rtol=0)
    assert declined is None


@pytest.mark.parametrize("ring", [False, True])
def test_cuda_graph_replay(ring) -> None:  # type: ignore[no-untyped-def]
    B, H_q, H_kv, N, D, W = 2, 64, 8, 32, 64, 128
    base = make_variant_case(20, B, H_q, H_kv, N, D, D, [3000, 10], window=W, sinks=True,
                             ring=ring, slots=W + N + 5 if ring else None)  # fmt: skip
    base = base.to("cuda", torch.bfloat16)
    q, k, v = base.q.clone(), base.k.clone(), base.v.clone()
    prefix, anc, nodes = base.prefix_len.clone(), base.anc.clone(), base.num_nodes.clone()  # type: ignore[union-attr]
    depth, sinks = base.depth.clone(), base.sinks.clone()  # type: ignore[union-attr]
    live = VariantCase(q, k, v, prefix, anc, nodes, depth, base.scale, W, sinks, ring)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        run(live)  # warm-up
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = run(live)
    for seed, prefixes in ((21, [7, 3000]), (22, [0, 1234]), (23, [2999, 64])):
        gen = torch.Generator().manual_seed(seed)
        new_anc, new_nodes, new_depth = random_parent_tree(gen, B, N, reach=2, sparse=seed == 22)
        q.copy_(torch.randn(q.shape, generator=gen).to(q.dtype))
        k.copy_(torch.randn(k.shape, generator=gen).to(k.dtype))
        v.copy_(torch.randn(v.shape, generator=gen).to(v.dtype))
        prefix.copy_(torch.tensor(prefixes) * (5 if ring else 1))
        anc.copy_(new_anc)
        nodes.copy_(new_nodes)
        depth.copy_(new_depth)
        sinks.copy_(torch.randn(H_q, generator=gen) * 3)
        graph.replay()
        torch.testing.assert_close(out, run(live), atol=0, rtol=0)
        assert_variant_close(out, live)
