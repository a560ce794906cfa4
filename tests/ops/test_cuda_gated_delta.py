"""cuda/gated_delta.cu through ``difftree_rt.ops.gdn_*`` on CUDA tensors against
reference/gated_delta.py, on a GPU machine (skipped elsewhere; the emulated kernels are tested on
the host in tests/emu/test_emu_gated_delta.py). Adds what the emulator cannot show: the device's
own math library and real concurrency, and Qwen3.5 head sizes (D_k = D_v = 128) with trees of
hundreds of nodes."""

from __future__ import annotations

import pytest
import torch
from tests.ops.gated_delta_cases import (
    SHAPES,
    accepted_paths,
    assert_close,
    commit_inputs,
    conv_case,
    verify_case,
)

from difftree_rt import build_info, ops
from difftree_rt.reference import gated_delta as ref

pytestmark = pytest.mark.cuda

VERIFY_ARGS = ("q", "k", "v", "g", "beta", "state", "tree_anc")


@pytest.fixture(autouse=True)
def _needs_cuda_build() -> None:
    if not build_info()["cuda_compiled"] or not torch.cuda.is_available():
        pytest.skip("needs a GPU and difftree_rt built with CUDA kernels")


def _cuda(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.cuda()


@pytest.mark.parametrize("K", [1, 2, 4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", ["random", "causal", "forest"])
def test_conv_cuda_matches_reference(K: int, dtype: torch.dtype, shape: str) -> None:
    c = conv_case(K + len(shape), B=3, N=37, C=300, K=K, dtype=dtype, shape=shape)
    for bias, act in ((c["bias"], True), (None, False)):
        want = ref.gdn_conv(c["x"], c["conv_tail"], c["weight"], bias, c["src"], act)
        got = ops.gdn_conv(
            c["x"].cuda(), c["conv_tail"].cuda(), c["weight"].cuda(), _cuda(bias),
            c["src"].cuda(), act,
        )  # fmt: skip
        assert_close(got.cpu(), want, ulps=64, what=f"conv K={K} {dtype} {shape}")


@pytest.mark.parametrize("K", [2, 4])
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_conv_commit_cuda_matches_reference(K: int, index_dtype: torch.dtype) -> None:
    c = conv_case(K, B=4, N=20, C=700, K=K, dtype=torch.bfloat16)
    gen = torch.Generator().manual_seed(K)
    path, accepted = accepted_paths(gen, c["parent"], P=8, index_dtype=index_dtype)
    accepted[1] = 0
    active = torch.tensor([True, True, False, True])
    for act in (None, active):
        want, got = c["conv_tail"].clone(), c["conv_tail"].cuda()
        ref.gdn_conv_commit(want, c["x"], c["src"], path, accepted, act)
        ops.gdn_conv_commit(
            got, c["x"].cuda(), c["src"].cuda(), path.cuda(), accepted.cuda(), _cuda(act)
        )  # fmt: skip
        assert torch.equal(got.cpu(), want)


def _check_verify(case: dict, what: str) -> None:  # type: ignore[type-arg]
    want = ref.gdn_verify(*[case[n] for n in VERIFY_ARGS])
    got = ops.gdn_verify(*[_cuda(case[n]) for n in VERIFY_ARGS])
    for name, w, o in zip(("out", "k_hat", "delta", "gcum"), want, got, strict=True):
        assert o.is_cuda
        assert_close(o.cpu(), w, what=f"{what} {name}")


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_verify_cuda_small_dims(shape: str, dtype: torch.dtype) -> None:
    case = verify_case(3, B=2, N=45, Hk=2, rep=2, Dk=16, Dv=24, dtype=dtype, shape=shape)
    _check_verify(case, f"{shape} {dtype}")


@pytest.mark.parametrize(
    ("N", "Hv", "shape"), [(1, 16, "random"), (64, 16, "random"), (257, 32, "forest"),
                           (128, 16, "causal"), (100, 16, "star")],
)  # fmt: skip
def test_verify_cuda_qwen_heads(N: int, Hv: int, shape: str) -> None:
    """D_k = D_v = 128, H_v = 2 H_k (Qwen3.5's linear-attention layers), bf16 activations."""
    case = verify_case(N, B=2, N=N, Hk=Hv // 2, rep=2, Dk=128, Dv=128, dtype=torch.bfloat16,
                       shape=shape)  # fmt: skip
    _check_verify(case, f"N={N} Hv={Hv} {shape}")


@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize(("Dk", "Dv"), [(16, 8), (128, 128)])
def test_commit_cuda_matches_reference(index_dtype: torch.dtype, Dk: int, Dv: int) -> None:
    c = commit_inputs(Dk, B=3, N=40, Hk=2, rep=2, Dk=Dk, Dv=Dv)
    gen = torch.Generator().manual_seed(Dv)
    path, accepted = accepted_paths(gen, c["parent"], P=12, index_dtype=index_dtype)
    accepted[0] = 0
    active = torch.tensor([True, False, True])
    for act in (None, active):
        want, got = c["state"].clone(), c["state"].cuda()
        ref.gdn_commit(want, c["k_hat"], c["delta"], c["gcum"], path, accepted, act)
        ops.gdn_commit(
            got, c["k_hat"].cuda(), c["delta"].cuda(), c["gcum"].cuda(), path.cuda(),
            accepted.cuda(), _cuda(act),
        )  # fmt: skip
        assert_close(got.cpu(), want, what=f"commit Dk={Dk} Dv={Dv}")


def test_cuda_garbage_indices_do_not_crash() -> None:
    c = conv_case(1, B=2, N=6, C=64, K=4, dtype=torch.float32)
    src = torch.tensor([-(2**30), 2**30, -1, 9]).repeat(2, 6, 1).to(torch.int32).cuda()
    path = torch.tensor([[2**31 - 1, -5], [7, -(2**31)]], dtype=torch.int32).cuda()
    acc = torch.tensor([-(2**31), 2**31 - 1], dtype=torch.int32).cuda()
    tail = c["conv_tail"].cuda()
    y = ops.gdn_conv(c["x"].cuda(), tail, c["weight"].cuda(), c["bias"].cuda(), src)
    ops.gdn_conv_commit(tail, c["x"].cuda(), src, path, acc)
    s = commit_inputs(2, B=2, N=6, Hk=1, rep=1, Dk=8, Dv=8)
    state = s["state"].cuda()
    ops.gdn_commit(state, s["k_hat"].cuda(), s["delta"].cuda(), s["gcum"].cuda(), path, acc)
    torch.cuda.synchronize()
    assert torch.isfinite(y).all() and torch.isfinite(tail).all() and torch.isfinite(state).all()
