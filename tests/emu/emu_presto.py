"""ctypes wrappers over the emulated PRESTO launchers (tests/emu/presto_capi.cpp): the same
arguments as ``difftree_rt.ops``, CPU tensors standing in for device memory."""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any

import torch

from difftree_rt.tree import anc_words

_P, _I64, _INT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
_CODE = {torch.int64: 64, torch.int32: 32, torch.float32: 1}


class EmuPresto:
    def __init__(self, path: Path) -> None:
        lib = ctypes.CDLL(str(path))
        lib.emu_config.argtypes = [_INT, _INT]
        lib.emu_last_error.restype = ctypes.c_char_p
        lib.emu_presto_workspace.restype = ctypes.c_size_t
        lib.emu_presto_workspace.argtypes = [_I64] * 5
        lib.emu_presto_select.argtypes = [
            _P, _INT, _P, _I64, _I64, _I64, _I64, _P, _INT, _P, _INT, _P, _P, _INT, _I64, _I64,
            ctypes.c_double, ctypes.c_double, _I64, ctypes.POINTER(_P), _P, ctypes.c_size_t,
        ]  # fmt: skip
        lib.emu_ngram_extend.argtypes = [_P, _P, _I64, _I64, _P, _I64, _P, _INT, _I64, _P, _INT, _P]
        self.lib = lib

    def config(self, threads: int = 0, schedule: int = 0) -> None:
        """Block size override (0: the kernel's) and thread order (0 fwd, 1 rev, 2 random)."""
        self.lib.emu_config(threads, schedule)

    @staticmethod
    def _ptr(t: torch.Tensor | None) -> Any:
        return None if t is None else ctypes.c_void_p(t.data_ptr())

    def presto_select(
        self, cand_token: torch.Tensor, cand_logprob: torch.Tensor, budget: int,
        context: torch.Tensor, keys: torch.Tensor, counts: torch.Tensor, *, order: int,
        vocab: int, lam: float = 0.2, alpha: float = 1.0, root_token: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, ...]:  # fmt: skip
        """The eight tree arrays (outputs pre-filled with garbage, as device memory)."""
        tok, lp, ctx = (t.contiguous() for t in (cand_token, cand_logprob, context))
        keys, counts = keys.contiguous(), counts.contiguous()
        root = None if root_token is None else root_token.contiguous()
        B, L, K = lp.shape
        N = budget + 1
        tree = [torch.full((B, N), 12345, dtype=torch.int32) for _ in range(3)]
        tree.append(torch.full((B, N), 7.0))
        tree += [torch.full((B, N), 12345, dtype=torch.int32) for _ in range(2)]
        tree.append(torch.full((B, N, anc_words(N)), 12345, dtype=torch.int32))
        tree.append(torch.full((B,), 12345, dtype=torch.int32))
        ws_bytes = self.lib.emu_presto_workspace(B, L, K, budget, order)
        ws = torch.full((max(ws_bytes, 1),), 0xAB, dtype=torch.uint8)
        ptrs = (_P * 8)(*[t.data_ptr() for t in tree])
        rc = self.lib.emu_presto_select(
            self._ptr(tok), _CODE[tok.dtype], self._ptr(lp), B, L, K, budget, self._ptr(root),
            _CODE[root.dtype] if root is not None else 0, self._ptr(ctx), _CODE[ctx.dtype],
            self._ptr(keys), self._ptr(counts), keys.dim(), keys.shape[-1], order, alpha, lam,
            vocab, ptrs, self._ptr(ws) if ws_bytes > 0 else None, ws_bytes,
        )  # fmt: skip
        self._check(rc)
        return tuple(tree)

    def ngram_extend(
        self, keys: torch.Tensor, counts: torch.Tensor, history: torch.Tensor,
        tokens: torch.Tensor, num_tokens: torch.Tensor, order: int,
        overflow: torch.Tensor | None = None,
    ) -> None:  # fmt: skip
        B, H = keys.shape
        tokens, num_tokens = tokens.contiguous(), num_tokens.contiguous()
        rc = self.lib.emu_ngram_extend(
            self._ptr(keys), self._ptr(counts), B, H, self._ptr(history), order,
            self._ptr(tokens), _CODE[tokens.dtype], tokens.shape[1], self._ptr(num_tokens),
            _CODE[num_tokens.dtype], self._ptr(overflow),
        )  # fmt: skip
        self._check(rc)

    def _check(self, rc: int) -> None:
        """A launch error (a Status, or an emulator failure such as a divergent barrier)."""
        if rc != 0:
            raise AssertionError(self.lib.emu_last_error().decode())
