"""cuda/tree_attention.cu on the host through the CUDA emulator (tools/cuda_emu, with
tools/cuda_emu/mma.cuh emulating cp.async / ldmatrix / mma.sync in their PTX fragment layouts)
against the PyTorch reference: plain trees and chains, sliding windows by position (W = 1, W =
the tree's depth, W below it, W past the context), attention sinks, ring caches with prefix_len
far past S, D_v != D_k (DeepSeek-V3's 192 / 128), GQA, padding rows, strided q, and split-KV
(the window's committed range split, the sink merged once). bf16 / fp16 within the FA-style
rule of the GPU tests; the thread order between barriers is random."""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tests.ops.attention_variant_cases import (
    VariantCase,
    assert_variant_close,
    discriminates,
    make_variant_case,
)

from difftree_rt._ext import ext

ROOT = Path(__file__).resolve().parents[2]

_CODE = {torch.int64: 64, torch.int32: 32, torch.float32: 1, torch.float16: 16, torch.bfloat16: 17}


def _build() -> Path:
    sys.path.insert(0, str(ROOT / "tools" / "cuda_emu"))
    from transform import launchers_emu_header, transform

    cxx = os.environ.get("CXX_EMU") or shutil.which("g++") or shutil.which("c++")
    if cxx is None or sys.platform != "linux":
        pytest.skip("the CUDA emulator needs a C++ compiler on Linux (ucontext)")
    here = Path(__file__).resolve().parent
    sources = [
        ROOT / "cuda" / "tree_attention.cu",
        here / "tree_attention_capi.cpp",
        *sorted((ROOT / "tools" / "cuda_emu").glob("*")),
        *sorted((ROOT / "cuda").glob("*.cuh")),
        *sorted((ROOT / "cuda").glob("*.h")),
        *sorted((ROOT / "cpp" / "include" / "difftree").glob("*.h")),
    ]
    digest = hashlib.sha256()
    for p in sources:
        if p.is_file():
            digest.update(p.read_bytes())
    out_dir = ROOT / "build" / "emu_attention" / digest.hexdigest()[:16]
    lib = out_dir / "libemu_attention.so"
    if lib.exists():
        return lib
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "launchers_emu.h").write_text(
        launchers_emu_header((ROOT / "cuda" / "launchers.h").read_text())
    )
    unit = out_dir / "tree_attention.cu.cpp"
    unit.write_text(transform((ROOT / "cuda" / "tree_attention.cu").read_text()))
    tmp = out_dir / f"tmp{os.getpid()}.so"
    cmd = [
        cxx, "-O2", "-std=c++17", "-fPIC", "-shared", "-ffp-contract=off", "-w",
        f"-I{ROOT / 'tools' / 'cuda_emu'}", f"-I{ROOT / 'cpp' / 'include'}",
        f"-I{ROOT / 'cpp' / 'src'}", f"-I{ROOT / 'cuda'}", f"-I{out_dir}",
        str(here / "tree_attention_capi.cpp"), str(unit),
        str(ROOT / "tools" / "cuda_emu" / "fibers.cpp"), str(ROOT / "cpp" / "src" / "tensor.cpp"),
        "-o", str(tmp),
    ]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"building the emulated tree_attention failed:\n{res.stderr[-6000:]}")
    tmp.rename(lib)
    return lib


class StridedTensor(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("code", ctypes.c_int32),
        ("ndim", ctypes.c_int32),
        ("shape", ctypes.c_int64 * 4),
        ("strides", ctypes.c_int64 * 4),
    ]


def _t(x: torch.Tensor | None):  # type: ignore[no-untyped-def]
    if x is None:
        return None
    assert x.dim() <= 4 and x.device.type == "cpu"
    pad = [0] * (4 - x.dim())
    shape = (ctypes.c_int64 * 4)(*x.shape, *pad)
    strides = (ctypes.c_int64 * 4)(*x.stride(), *pad)
    return ctypes.pointer(StridedTensor(x.data_ptr(), _CODE[x.dtype], x.dim(), shape, strides))


class EmuAttention:
    def __init__(self, path: Path) -> None:
        lib = ctypes.CDLL(str(path))
        lib.emu_attn_last_error.restype = ctypes.c_char_p
        lib.emu_attn_config.argtypes = [ctypes.c_int]
        lib.emu_tree_attention.argtypes = [ctypes.c_void_p] * 6 + [
            ctypes.c_float, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
            ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
        ]  # fmt: skip
        self.lib = lib

    def __call__(  # type: ignore[no-untyped-def]
        self, q, k, v, prefix_len, anc, num_nodes, scale, is_chain=False, num_splits=1, *,
        depth=None, window=0, sinks=None, ring=False,
    ) -> torch.Tensor:  # fmt: skip
        """The launcher's result, ``num_splits`` as the dispatch resolves it (0: automatic).
        The output and the split workspace start as NaN (unwritten device memory)."""
        B, H_q, N, _ = q.shape
        H_kv, S, D_v = k.shape[1], k.shape[2], v.shape[3]
        if num_splits == 0:
            num_splits = int(ext().tree_attention_num_splits(B, H_q, H_kv, N, S))
        out = torch.full((B, N, H_q, D_v), float("nan"), dtype=q.dtype).transpose(1, 2)
        ws_bytes = int(ext().tree_attention_workspace_bytes(B, H_q, H_kv, N, D_v, S, num_splits))
        ws = torch.full((max(ws_bytes // 4, 1),), float("nan"), dtype=torch.float32)
        rc = self.lib.emu_tree_attention(
            _t(q), _t(k), _t(v), _t(prefix_len), _t(anc), _t(num_nodes), float(scale),
            int(is_chain), _t(depth), _t(sinks), int(window), int(ring), int(num_splits), _t(out),
            ctypes.c_void_p(ws.data_ptr() if ws_bytes else 0),
        )  # fmt: skip
        if rc != 0:
            raise (NotImplementedError if rc == 1 else AssertionError)(
                self.lib.emu_attn_last_error().decode()
            )
        return out

    def case(self, c: VariantCase, num_splits: int = 1, **kw) -> torch.Tensor:  # type: ignore[no-untyped-def]
        args = {**c.variant(), **kw}
        return self(
            c.q, c.k, c.v, c.prefix_len, c.anc, c.num_nodes, c.scale, num_splits=num_splits,
            **args,
        )  # fmt: skip


@pytest.fixture(scope="module")
def emu() -> EmuAttention:
    kernels = EmuAttention(_build())
    kernels.lib.emu_attn_config(2)  # random thread order between barriers
    return kernels


DTYPES = [torch.bfloat16, torch.float16]


# ---- plain tree attention (the kernel's pre-variant behaviour) --------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("B", "H_q", "H_kv", "N", "D", "prefixes", "splits"),
    [
        (1, 4, 2, 1, 64, [0], 1),
        (2, 4, 2, 17, 128, [65, 0], 1),
        (2, 8, 1, 16, 64, [130, 7], 3),
        (1, 2, 2, 70, 64, [127], 2),
    ],
)
def test_plain(emu, dtype, B, H_q, H_kv, N, D, prefixes, splits) -> None:  # type: ignore[no-untyped-def]
    c = make_variant_case(N + D + B, B, H_q, H_kv, N, D, D, prefixes, sparse=N > 4).to("cpu", dtype)
    assert_variant_close(emu.case(c, splits), c)


# ---- sliding window over trees ----------------------------------------------------------------


def _max_depth(c: VariantCase) -> int:
    assert c.depth is not None
    return int(c.depth.max())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("window", ["1", "2", "depth", "depth+1", "100", "huge"])
def test_window_over_tree(emu, dtype, window) -> None:  # type: ignore[no-untyped-def]
    # gpt-oss's GQA group (64 / 8 = 8 heads per KV head), deep trees (reach 2), one request
    # with a prefix shorter than the window, one longer.
    c = make_variant_case(41, 2, 8, 1, 24, 64, 64, [150, 9], reach=2)
    W = {"depth": _max_depth(c), "depth+1": _max_depth(c) + 1, "huge": 10**6}.get(window)
    c.window = int(window) if W is None else W
    assert _max_depth(c) >= 6  # windows 1, 2 are below the tree's depth
    c = c.to("cpu", dtype)
    got = emu.case(c)
    assert_variant_close(got, c)
    if window == "huge":  # sees everything: the windowed kernel == the plain one, bit for bit
        torch.testing.assert_close(got, emu.case(c, window=0), atol=0, rtol=0)
    else:
        assert discriminates(c, got, window=0)


@pytest.mark.parametrize("splits", [1, 2, 5, 0])
@pytest.mark.parametrize("window", [3, 64, 65, 130])
def test_window_split_kv(emu, splits, window) -> None:  # type: ignore[no-untyped-def]
    # The committed range [P + min_pos - W + 1, P) starts mid-tile and per row; its chunks
    # split across the splits, the tree in the last one. Two m-tiles (G = 4, N = 20).
    c = make_variant_case(42 + window, 2, 4, 1, 20, 64, 64, [300, 70], window=window, reach=2)
    c = c.to("cpu", torch.bfloat16)
    got = emu.case(c, splits)
    assert_variant_close(got, c)
    assert discriminates(c, got, window=0)


@pytest.mark.parametrize("sparse", [False, True])
def test_window_padding_rows_and_int_dtypes(emu, sparse) -> None:  # type: ignore[no-untyped-def]
    c = make_variant_case(43, 3, 4, 2, 33, 64, 64, [40, 0, 90], window=7, reach=4, sparse=sparse)
    c = c.to("cpu", torch.float16)
    if sparse:
        assert c.num_nodes is not None and bool((c.num_nodes < 33).any())
    got = emu.case(c, 2)
    assert_variant_close(got, c)
    assert c.depth is not None
    wide = emu.case(c, 2, depth=c.depth.long())
    torch.testing.assert_close(wide, got, atol=0, rtol=0)
    got32 = emu(c.q, c.k, c.v, c.prefix_len.int(), c.anc, c.num_nodes.long(), c.scale,  # type: ignore[union-attr]
                num_splits=2, **c.variant())  # fmt: skip
    torch.testing.assert_close(got32, got, atol=0, rtol=0)


@pytest.mark.parametrize("depth_arg", [False, True])
@pytest.mark.parametrize(("N", "window", "splits"), [(9, 1, 1), (70, 5, 1), (200, 40, 3)])
def test_window_causal_rows(emu, depth_arg, N, window, splits) -> None:  # type: ignore[no-untyped-def]
    # Causal new rows (prefill / chains): positions are the row index; with N = 200 and G = 1
    # the later m-tiles skip the tree keys out of every row's window.
    c = make_variant_case(44 + N, 1, 2, 2, N, 64, 64, [100], window=window, causal=True,
                          causal_depth=depth_arg).to("cpu", torch.bfloat16)  # fmt: skip
    got = emu.case(c, splits)
    assert_variant_close(got, c)
    assert discriminates(c, got, window=0)
    if not depth_arg:  # is_chain with a (chain) bitmask ignores the bitmask: same kernel path
        chain = emu(c.q, c.k, c.v, c.prefix_len, None, None, c.scale, True, splits, **c.variant())
        torch.testing.assert_close(chain, got, atol=0, rtol=0)


# ---- sinks --------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("splits", [1, 4])
@pytest.mark.parametrize("window", [0, 128])
def test_sinks(emu, dtype, splits, window) -> None:  # type: ignore[no-untyped-def]
    # gpt-oss: D = 64, sliding window 128 + sinks on alternate layers, sinks alone on the rest.
    c = make_variant_case(45, 2, 8, 1, 16, 64, 64, [400, 20], window=window, sinks=True,
                          reach=3).to("cpu", dtype)  # fmt: skip
    got = emu.case(c, splits)
    assert_variant_close(got, c)
    assert discriminates(c, got, sinks=None)
    # The sink enters once: the split-KV merge equals the single pass.
    if splits > 1:
        one = emu.case(c, 1)
        torch.testing.assert_close(got.float(), one.float(), atol=2e-2, rtol=1e-2)


@pytest.mark.parametrize("ring", [False, True])
@pytest.mark.parametrize("splits", [1, 0])
def test_gpt_oss_sliding_layer(emu, ring, splits) -> None:  # type: ignore[no-untyped-def]
    # gpt-oss-20b's sliding layers, scaled down in heads only: G = 8 query heads per KV head,
    # D = 64, W = 128, sinks; a 64-node tree spans 8 query tiles, each with its own committed
    # range; contexts past and below the window.
    c = make_variant_case(52, 2, 16, 2, 64, 64, 64, [1000, 50], window=128, sinks=True,
                          ring=ring, reach=4).to("cpu", torch.bfloat16)  # fmt: skip
    got = emu.case(c, splits)
    assert_variant_close(got, c)
    if not ring:
        assert discriminates(c, got, window=0)


# ---- ring caches --------------------------------------------------------------------------------


@pytest.mark.parametrize("splits", [1, 2, 0])
@pytest.mark.parametrize(
    ("window", "N", "slots", "prefixes"),
    [
        (128, 16, None, [5000, 0, 130]),  # the smallest ring, prefix far past S
        (4, 12, None, [1000, 3, 13]),  # a ring smaller than one key tile
        (64, 24, 200, [777, 63, 199]),  # a roomier ring (S > W - 1 + N)
        (1, 8, None, [12345, 1, 0]),  # W = 1: each row sees itself only
    ],
)
def test_ring(emu, splits, window, N, slots, prefixes) -> None:  # type: ignore[no-untyped-def]
    c = make_variant_case(46 + window + N, 3, 8, 2, N, 64, 64, prefixes, window=window, ring=True,
                          slots=slots, sinks=True, reach=2).to("cpu", torch.bfloat16)  # fmt: skip
    got = emu.case(c, splits)
    assert_variant_close(got, c)


@pytest.mark.parametrize("splits", [1, 3])
def test_ring_prefix_near_int64_max(emu, splits) -> None:  # type: ignore[no-untyped-def]
    # A ring's prefix_len may be any int64, 2^63 - 1 included: the result depends on it only
    # through its slot (prefix_len % S) once prefix_len >= W.
    c = make_variant_case(51, 2, 8, 2, 16, 64, 64, [0, 0], window=100, ring=True, sinks=True)
    c = c.to("cpu", torch.bfloat16)
    S = c.k.shape[2]
    huge = torch.tensor([2**63 - 1, 2**63 - 1 - 77 * S - 5])
    c.prefix_len = huge
    got = emu.case(c, splits)
    c.prefix_len = huge % S + 2 * S
    torch.testing.assert_close(got, emu.case(c, splits), atol=0, rtol=0)
    assert_variant_close(got, c)


def test_ring_equals_full_cache(emu) -> None:  # type: ignore[no-untyped-def]
    # The same rows in a full cache and in a ring (row r at slot r % S): the same attention.
    full = make_variant_case(47, 2, 8, 1, 16, 64, 64, [700, 300], window=128, reach=2)
    S = 128 - 1 + 16 + 5
    ring = VariantCase(**{**full.__dict__})
    ring.ring = True
    rows = torch.arange(full.k.shape[2])
    ring.k = torch.zeros((2, 1, S, 64))
    ring.v = torch.zeros((2, 1, S, 64))
    for b in range(2):  # the rows the window can reach: [P - W + 1, P + N)
        P = int(full.prefix_len[b])
        r = rows[P - 127 : P + 16]
        ring.k[b, :, r % S] = full.k[b, :, r]
        ring.v[b, :, r % S] = full.v[b, :, r]
    full, ring = full.to("cpu", torch.bfloat16), ring.to("cpu", torch.bfloat16)
    torch.testing.assert_close(emu.case(ring, 1), emu.case(full, 1), atol=0, rtol=0)
    assert_variant_close(emu.case(ring, 3), ring)


# ---- D_v != D_k, shapes -----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("window", "sinks", "splits"), [(0, False, 1), (0, False, 3), (48, True, 2)]
)
def test_latent_head_dims(emu, dtype, window, sinks, splits) -> None:  # type: ignore[no-untyped-def]
    # DeepSeek-V3 / Kimi as transformers expands MLA: D_k = 128 + 64, D_v = 128; GQA 4 -> 2.
    c = make_variant_case(48, 2, 4, 2, 12, 192, 128, [90, 5], window=window, sinks=sinks)
    c = c.to("cpu", dtype)
    got = emu.case(c, splits)
    assert got.shape == (2, 4, 12, 128)
    assert_variant_close(got, c)


def test_strided_q(emu) -> None:  # type: ignore[no-untyped-def]
    c = make_variant_case(49, 2, 8, 2, 16, 128, 128, [77, 200], window=50, sinks=True)
    c = c.to("cpu", torch.bfloat16)
    q_view = c.q.transpose(1, 2).contiguous().transpose(1, 2)  # HF's [B, N, H, D] storage
    got = emu(q_view, c.k, c.v, c.prefix_len, c.anc, c.num_nodes, c.scale, **c.variant())
    torch.testing.assert_close(got, emu.case(c), atol=0, rtol=0)


def test_unsupported_head_dims(emu) -> None:  # type: ignore[no-untyped-def]
    c = make_variant_case(50, 1, 2, 1, 4, 96, 96, [3]).to("cpu", torch.bfloat16)
    with pytest.raises(NotImplementedError, match="head_dim"):
        emu.case(c)
    c = make_variant_case(50, 1, 2, 1, 4, 128, 64, [3]).to("cpu", torch.bfloat16)
    with pytest.raises(NotImplementedError, match="head_dim"):
        emu.case(c)
