"""Builds the emulated CUDA kernels (tools/cuda_emu) for the host once per source version:
``build/emu/<hash>/libemu_kernels.so`` (every kernel but tree_attention). Skips the tests
where no C++ compiler or no ucontext is available (they need a POSIX host; CI has both)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools" / "cuda_emu"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

#: The kernel sources emulated, each its own translation unit.
KERNELS = [
    "ddtree_select", "caddtree_select", "taps_select", "d2sd", "topk_logprobs", "node_select",
    "tree_walk", "kv_commit", "presto", "gated_delta",
]  # fmt: skip
SOURCES = [
    *(ROOT / "cuda" / f"{k}.cu" for k in KERNELS),
    ROOT / "tools" / "cuda_emu" / "cuda_runtime.h",
    ROOT / "tools" / "cuda_emu" / "cuda_bf16.h",
    ROOT / "tools" / "cuda_emu" / "cuda_fp16.h",
    ROOT / "tools" / "cuda_emu" / "fibers.cpp",
    ROOT / "tools" / "cuda_emu" / "transform.py",
    ROOT / "tests" / "emu" / "kernels_capi.cpp",
]
HEADERS = sorted((ROOT / "cuda").glob("*.cuh")) + sorted((ROOT / "cuda").glob("*.h"))


def _build() -> Path:
    from transform import launchers_emu_header, transform

    cxx = os.environ.get("CXX_EMU") or shutil.which("g++") or shutil.which("c++")
    if cxx is None or sys.platform != "linux":
        pytest.skip("the CUDA emulator needs a C++ compiler on Linux (ucontext)")
    digest = hashlib.sha256()
    for p in [*SOURCES, *HEADERS, *sorted((ROOT / "cpp" / "src" / "common").glob("*.h"))]:
        digest.update(p.read_bytes())
    out_dir = ROOT / "build" / "emu" / digest.hexdigest()[:16]
    lib = out_dir / "libemu_kernels.so"
    if lib.exists():
        return lib
    out_dir.mkdir(parents=True, exist_ok=True)
    header = launchers_emu_header((ROOT / "cuda" / "launchers.h").read_text())
    (out_dir / "launchers_emu.h").write_text(header)
    units = []
    for k in KERNELS:
        unit = out_dir / f"{k}.cu.cpp"
        unit.write_text(transform((ROOT / "cuda" / f"{k}.cu").read_text()))
        units.append(str(unit))
    cmd = [
        cxx, "-O1", "-std=c++17", "-fPIC", "-shared", "-ffp-contract=off", "-w",
        f"-I{ROOT / 'tools' / 'cuda_emu'}", f"-I{ROOT / 'cpp' / 'include'}",
        f"-I{ROOT / 'cpp' / 'src'}", f"-I{ROOT / 'cuda'}", f"-I{out_dir}",
        str(ROOT / "tests" / "emu" / "kernels_capi.cpp"),
        *units,
        str(ROOT / "tools" / "cuda_emu" / "fibers.cpp"),
        str(ROOT / "cpp" / "src" / "tensor.cpp"),
        "-o", str(out_dir / "tmp.so"),
    ]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"building the CUDA emulator failed:\n{res.stderr[-6000:]}")
    (out_dir / "tmp.so").rename(lib)
    return lib


@pytest.fixture(scope="session")
def emu_lib() -> Path:
    return _build()
