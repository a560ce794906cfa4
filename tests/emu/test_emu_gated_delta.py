"""cuda/gated_delta.cu through the CUDA emulator against reference/gated_delta.py: the conv and
its commit, the tree verify (random trees, causal rows, chains, stars, self-only rows, several
32-row chunks, H_v = H_k and 2 H_k, D_k != D_v, fp32 / bf16 / fp16) and the state commit (active
masks, accepted = 0), and garbage indices, which must be clamped (no crash, no error)."""

from __future__ import annotations

import pytest
import torch
from emu_kernels import EmuKernels
from tests.ops.gated_delta_cases import (
    SHAPES,
    accepted_paths,
    assert_close,
    commit_inputs,
    conv_case,
    verify_case,
)

from difftree_rt.reference import gated_delta as ref

DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@pytest.fixture(scope="module")
def emu(emu_lib) -> EmuKernels:  # type: ignore[no-untyped-def]
    kernels = EmuKernels(emu_lib)
    kernels.config(threads=0, schedule=2)  # random thread order between barriers
    return kernels


# ---- gdn_conv / gdn_conv_commit ---------------------------------------------------------------


@pytest.mark.parametrize("K", [1, 2, 4])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", ["random", "causal", "star", "forest"])
def test_conv_matches_reference(emu: EmuKernels, K: int, dtype: torch.dtype, shape: str) -> None:
    c = conv_case(K * 7 + len(shape), B=2, N=11, C=40, K=K, dtype=dtype, shape=shape)
    for bias, act in ((c["bias"], True), (None, False)):
        want = ref.gdn_conv(c["x"], c["conv_tail"], c["weight"], bias, c["src"], act)
        got = emu.gdn_conv(c["x"], c["conv_tail"], c["weight"], bias, c["src"], act)
        assert_close(got, want, ulps=64, what=f"conv K={K} {dtype} {shape} act={act}")


def test_conv_one_row(emu: EmuKernels) -> None:
    c = conv_case(3, B=3, N=1, C=5, K=4, dtype=torch.float32)
    want = ref.gdn_conv(c["x"], c["conv_tail"], c["weight"], c["bias"], c["src"])
    assert_close(emu.gdn_conv(c["x"], c["conv_tail"], c["weight"], c["bias"], c["src"]), want)


@pytest.mark.parametrize("K", [2, 3, 4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_conv_commit_matches_reference(
    emu: EmuKernels, K: int, dtype: torch.dtype, index_dtype: torch.dtype
) -> None:
    B, N = 4, 9
    c = conv_case(K, B=B, N=N, C=150, K=K, dtype=dtype, shape="random")
    gen = torch.Generator().manual_seed(K)
    path, accepted = accepted_paths(gen, c["parent"], P=6, index_dtype=index_dtype)
    accepted[1] = 0  # only the root accepted: the tail reaches back into the old tail
    active = torch.tensor([True, True, False, True])
    for act in (None, active):
        want, got = c["conv_tail"].clone(), c["conv_tail"].clone()
        ref.gdn_conv_commit(want, c["x"], c["src"], path, accepted, act)
        emu.gdn_conv_commit(got, c["x"], c["src"], path, accepted, act)
        assert torch.equal(got, want), (K, dtype, act)
    assert torch.equal(got[2], c["conv_tail"][2])  # inactive: untouched


def test_conv_garbage_indices_are_clamped(emu: EmuKernels) -> None:
    c = conv_case(5, B=2, N=6, C=33, K=4, dtype=torch.float32)
    src = torch.tensor([-(2**30), 2**30, -1, 9]).repeat(2, 6, 1).to(torch.int32)
    out = emu.gdn_conv(c["x"], c["conv_tail"], c["weight"], c["bias"], src)
    assert torch.isfinite(out).all()
    tail = c["conv_tail"].clone()
    path = torch.tensor([[2**31 - 1, -5], [7, -(2**31)]], dtype=torch.int32)
    for accepted in ([0, 1], [-(2**31), 2**31 - 1], [1, 0]):
        acc = torch.tensor(accepted, dtype=torch.int32)
        emu.gdn_conv_commit(tail, c["x"], src, path, acc)
    assert torch.isfinite(tail).all()


# ---- gdn_verify -------------------------------------------------------------------------------


def _check_verify(emu: EmuKernels, case: dict, what: str) -> None:  # type: ignore[type-arg]
    args = [case[n] for n in ("q", "k", "v", "g", "beta", "state", "tree_anc")]
    want = ref.gdn_verify(*args)
    got = emu.gdn_verify(*args)
    for name, w, o in zip(("out", "k_hat", "delta", "gcum"), want, got, strict=True):
        assert_close(o, w, what=f"{what} {name}")


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_verify_matches_reference(emu: EmuKernels, shape: str, dtype: torch.dtype) -> None:
    case = verify_case(
        len(shape), B=2, N=13, Hk=1, rep=2, Dk=16, Dv=8, dtype=dtype, shape=shape
    )  # fmt: skip
    _check_verify(emu, case, f"{shape} {dtype}")


@pytest.mark.parametrize(
    ("N", "Hk", "rep", "Dk", "Dv", "shape"),
    [
        (16, 2, 1, 8, 8, "chain"),  # depth-16 chain through the mask
        (40, 1, 1, 32, 24, "star"),  # wide star over two chunks
        (70, 1, 2, 8, 40, "random"),  # three chunks, two D_v tiles (one partial)
        (70, 2, 1, 16, 8, "causal"),  # causal rows over three chunks
        (45, 1, 3, 24, 16, "forest"),  # self-only rows, H_v = 3 H_k
        (1, 2, 2, 8, 16, "random"),  # N = 1
    ],
)
def test_verify_shapes(
    emu: EmuKernels, N: int, Hk: int, rep: int, Dk: int, Dv: int, shape: str
) -> None:
    for dtype in (torch.float32, torch.bfloat16):
        case = verify_case(N + Dk, B=2, N=N, Hk=Hk, rep=rep, Dk=Dk, Dv=Dv, dtype=dtype, shape=shape)
        _check_verify(emu, case, f"N={N} Hk={Hk} rep={rep} Dk={Dk} Dv={Dv} {shape} {dtype}")


def test_verify_garbage_mask_runs(emu: EmuKernels) -> None:
    """Bits above the diagonal and past N are ignored; arbitrary words never read out of bounds."""
    case = verify_case(9, B=2, N=37, Hk=1, rep=1, Dk=8, Dv=8, dtype=torch.float32, shape="chain")
    garbage = torch.randint(-(2**31), 2**31 - 1, case["tree_anc"].shape, dtype=torch.int64)
    case["tree_anc"] = garbage.to(torch.int32)
    args = [case[n] for n in ("q", "k", "v", "g", "beta", "state", "tree_anc")]
    _, k_hat, _, gcum = emu.gdn_verify(*args)
    assert torch.isfinite(k_hat).all() and torch.isfinite(gcum).all()
    # Only the strict lower bits count: setting every upper bit changes nothing.
    chain = verify_case(9, B=2, N=37, Hk=1, rep=1, Dk=8, Dv=8, dtype=torch.float32, shape="chain")
    noisy = dict(chain)
    upper = torch.ones(37, 64, dtype=torch.bool).triu(1)  # j > i, including bits past N
    words = (upper.view(37, 2, 32).to(torch.int64) << torch.arange(32)).sum(-1)
    words = ((words + 2**31) % 2**32 - 2**31).to(torch.int32)
    noisy["tree_anc"] = chain["tree_anc"] | words
    a = emu.gdn_verify(*[chain[n] for n in ("q", "k", "v", "g", "beta", "state", "tree_anc")])
    b = emu.gdn_verify(*[noisy[n] for n in ("q", "k", "v", "g", "beta", "state", "tree_anc")])
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)


# ---- gdn_commit -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("Hk", "rep", "Dk", "Dv"), [(1, 1, 8, 8), (2, 2, 16, 32), (1, 2, 32, 8), (1, 1, 40, 200)]
)
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_commit_matches_reference(
    emu: EmuKernels, Hk: int, rep: int, Dk: int, Dv: int, index_dtype: torch.dtype
) -> None:
    B, N = 3, 20
    c = commit_inputs(Dk + Dv, B=B, N=N, Hk=Hk, rep=rep, Dk=Dk, Dv=Dv)
    gen = torch.Generator().manual_seed(Dk)
    path, accepted = accepted_paths(gen, c["parent"], P=8, index_dtype=index_dtype)
    accepted[0] = 0
    active = torch.tensor([True, False, True])
    for act in (None, active):
        want, got = c["state"].clone(), c["state"].clone()
        ref.gdn_commit(want, c["k_hat"], c["delta"], c["gcum"], path, accepted, act)
        emu.gdn_commit(got, c["k_hat"], c["delta"], c["gcum"], path, accepted, act)
        assert_close(got, want, what=f"commit active={act is not None}")
    assert torch.equal(got[1], c["state"][1])  # inactive: untouched


def test_commit_long_path(emu: EmuKernels) -> None:
    """A path longer than one staging pass (kThreads nodes) on a 300-row chain."""
    c = commit_inputs(1, B=1, N=300, Hk=1, rep=1, Dk=8, Dv=8)
    parent = torch.arange(300).unsqueeze(0) - 1
    gcum = torch.cumsum(-torch.rand(1, 300, 1) * 0.01, dim=1)
    path = torch.arange(300).unsqueeze(0)
    accepted = torch.tensor([290])
    want, got = c["state"].clone(), c["state"].clone()
    ref.gdn_commit(want, c["k_hat"], c["delta"], gcum, path, accepted)
    emu.gdn_commit(got, c["k_hat"], c["delta"], gcum, path, accepted)
    assert parent.shape == path.shape
    assert_close(got, want, what="commit 291 nodes")


def test_verify_then_commit_equals_fresh_verify(emu: EmuKernels) -> None:
    """The committed state is the accepted node's state: a chain verified from it gives the
    same rows as those nodes verified as descendants of the accepted path."""
    case = verify_case(4, B=1, N=10, Hk=1, rep=2, Dk=16, Dv=16, dtype=torch.float32, shape="chain")
    args = [case[n] for n in ("q", "k", "v", "g", "beta", "state", "tree_anc")]
    _, k_hat, delta, gcum = emu.gdn_verify(*args)
    state = case["state"].clone()
    emu.gdn_commit(state, k_hat, delta, gcum, torch.arange(10)[None, :6], torch.tensor([5]))
    tail = {n: case[n][:, 6:] for n in ("q", "k", "v", "g", "beta")}
    out_tail = emu.gdn_verify(*[tail[n] for n in ("q", "k", "v", "g", "beta")], state, None)[0]
    assert_close(out_tail, emu.gdn_verify(*args)[0][:, 6:], what="continued chain")


def test_commit_garbage_indices_are_clamped(emu: EmuKernels) -> None:
    c = commit_inputs(2, B=2, N=5, Hk=1, rep=1, Dk=8, Dv=8)
    path = torch.tensor([[2**31 - 1, -7, 3], [-(2**31), 99, 0]], dtype=torch.int32)
    for accepted in ([0, 2], [-(2**31), 2**31 - 1], [2, -1]):
        state = c["state"].clone()
        acc = torch.tensor(accepted, dtype=torch.int32)
        emu.gdn_commit(state, c["k_hat"], c["delta"], c["gcum"], path, acc)
        assert torch.isfinite(state).all()
