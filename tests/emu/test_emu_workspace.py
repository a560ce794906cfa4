"""The selectors' workspace queries (difftree_rt._C, so the C++ API and the C ABI) give the CUDA
kernels' own scratch size in every build, CUDA compiled or not: the same number as the emulated
launchers' sizing, 0 where the scratch fits in shared memory."""

from __future__ import annotations

import ctypes

import pytest

from difftree_rt._ext import ext

# (op, the emulator's sizing function, arguments, whether the scratch outgrows shared memory)
CASES = [
    ("ddtree_select", "emu_ddtree_workspace", (1, 15, 256, 256), False),
    ("ddtree_select", "emu_ddtree_workspace", (3, 15, 4096, 4096), True),
    ("taps_select", "emu_taps_workspace", (1, 129, 64), False),
    ("taps_select", "emu_taps_workspace", (3, 4097, 4096), True),
    ("d2sd_select", "emu_d2sd_workspace", (1, 15, 4, 15, 64), False),
    ("d2sd_select", "emu_d2sd_workspace", (2, 100, 200, 300, 4096), True),
    ("presto_select", "emu_presto_workspace", (1, 15, 16, 64, 3), False),
    ("presto_select", "emu_presto_workspace", (2, 15, 64, 1024, 3), True),
]


@pytest.mark.parametrize(("op", "emu_fn", "args", "needs_workspace"), CASES)
def test_workspace_bytes_are_the_kernels_in_every_build(  # type: ignore[no-untyped-def]
    emu_lib, op: str, emu_fn: str, args: tuple[int, ...], needs_workspace: bool
) -> None:
    fn = getattr(ctypes.CDLL(str(emu_lib)), emu_fn)
    fn.argtypes = [ctypes.c_int64] * len(args)
    fn.restype = ctypes.c_size_t
    kernel_bytes = int(fn(*args))
    assert (kernel_bytes > 0) == needs_workspace
    assert int(getattr(ext(), f"{op}_workspace_bytes")(*args)) == kernel_bytes
