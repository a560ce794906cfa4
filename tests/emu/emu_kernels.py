"""ctypes wrappers over the emulated kernels (tests/emu/kernels_capi.cpp): the same
arguments as the ``difftree_rt.ops`` calls they mirror, CPU tensors standing in for device
memory; outputs are pre-filled with garbage (as device memory would be)."""

from __future__ import annotations

import ctypes
from pathlib import Path

import torch

from difftree_rt.tree import anc_words

_CODE = {
    torch.int64: 64, torch.int32: 32, torch.float32: 1, torch.uint8: 8, torch.float16: 16,
    torch.bfloat16: 17, torch.bool: 2,
}  # fmt: skip


class EmuTensor(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("code", ctypes.c_int32),
        ("ndim", ctypes.c_int32),
        ("shape", ctypes.c_int64 * 4),
    ]


def _t(x: torch.Tensor | None) -> ctypes._Pointer | None:  # type: ignore[type-arg]
    if x is None:
        return None
    assert x.is_contiguous() and x.dim() <= 4
    shape = (ctypes.c_int64 * 4)(*x.shape, *([0] * (4 - x.dim())))
    return ctypes.pointer(EmuTensor(x.data_ptr(), _CODE[x.dtype], x.dim(), shape))


def _tree(B: int, N: int) -> tuple[list[torch.Tensor], ctypes.Array]:  # type: ignore[type-arg]
    tree = [torch.full((B, N), 12345, dtype=torch.int32) for _ in range(3)]
    tree.append(torch.full((B, N), 7.0))
    tree += [torch.full((B, N), 12345, dtype=torch.int32) for _ in range(2)]
    tree.append(torch.full((B, N, anc_words(N)), 12345, dtype=torch.int32))
    tree.append(torch.full((B,), 12345, dtype=torch.int32))
    arr = (EmuTensor * 8)(*[_t(t).contents for t in tree])  # type: ignore[union-attr]
    return tree, arr


def _workspace(nbytes: int) -> tuple[torch.Tensor, int]:
    ws = torch.full((max(nbytes, 1),), 0xAB, dtype=torch.uint8)
    return ws, ws.data_ptr() if nbytes > 0 else 0


class EmuKernels:
    def __init__(self, path: Path) -> None:
        lib = ctypes.CDLL(str(path))
        lib.emu_last_error.restype = ctypes.c_char_p
        lib.emu_config.argtypes = [ctypes.c_int, ctypes.c_int]
        names = ("emu_ddtree_workspace", "emu_taps_workspace", "emu_d2sd_workspace",
                 "emu_presto_workspace")  # fmt: skip
        for name in names:
            getattr(lib, name).restype = ctypes.c_size_t
        lib.emu_ddtree_workspace.argtypes = [ctypes.c_int64] * 4
        lib.emu_taps_workspace.argtypes = [ctypes.c_int64] * 3
        lib.emu_d2sd_workspace.argtypes = [ctypes.c_int64] * 5
        lib.emu_presto_workspace.argtypes = [ctypes.c_int64] * 5
        self.lib = lib

    def config(self, threads: int = 0, schedule: int = 0) -> None:
        """Block size override (0: the kernel's) and thread order (0 fwd, 1 rev, 2 random)."""
        self.lib.emu_config(threads, schedule)

    def _check(self, rc: int) -> None:
        """A launch error (a Status, or an emulator failure such as a divergent barrier)."""
        if rc != 0:
            raise AssertionError(self.lib.emu_last_error().decode())

    def ddtree_select(self, tok, lp, budget, root=None):  # type: ignore[no-untyped-def]
        B, L, K = lp.shape
        tree, arr = _tree(B, budget + 1)
        ws, ptr = _workspace(self.lib.emu_ddtree_workspace(B, L, K, budget))
        self._check(self.lib.emu_ddtree_select(
            _t(tok), _t(lp), ctypes.c_int64(budget), _t(root), arr, ctypes.c_void_p(ptr),
            ctypes.c_size_t(ws.numel() if ptr else 0),
        ))  # fmt: skip
        return tree

    def caddtree_select(self, tok, lp, max_budget, verify, draft, root=None):  # type: ignore[no-untyped-def]
        B, L, K = lp.shape
        tree, arr = _tree(B, max_budget + 1)
        ws, ptr = _workspace(self.lib.emu_ddtree_workspace(B, L, K, max_budget))
        self._check(self.lib.emu_caddtree_select(
            _t(tok), _t(lp), ctypes.c_int64(max_budget), _t(root), _t(verify), _t(draft), arr,
            ctypes.c_void_p(ptr), ctypes.c_size_t(ws.numel() if ptr else 0),
        ))  # fmt: skip
        return tree

    def taps_select(self, token, parent, size, log_qc, budget):  # type: ignore[no-untyped-def]
        B, P1 = log_qc.shape
        tree, arr = _tree(B, budget + 1)
        ws, ptr = _workspace(self.lib.emu_taps_workspace(B, P1, budget))
        self._check(self.lib.emu_taps_select(
            _t(token), _t(parent), _t(size), _t(log_qc), ctypes.c_int64(budget), arr,
            ctypes.c_void_p(ptr), ctypes.c_size_t(ws.numel() if ptr else 0),
        ))  # fmt: skip
        return tree

    def d2sd_boundaries(self, trunk_logprob: torch.Tensor, k: int) -> torch.Tensor:
        boundary = torch.full((trunk_logprob.shape[0], k), 12345, dtype=torch.int32)
        self._check(self.lib.emu_d2sd_boundaries(_t(trunk_logprob), _t(boundary)))
        return boundary

    def d2sd_select(self, trunk_token, trunk_lp, boundary, branch_token, branch_lp, budget,
                    root=None):  # type: ignore[no-untyped-def]  # fmt: skip
        B, L1 = trunk_lp.shape
        K, L2 = branch_lp.shape[1], branch_lp.shape[2]
        tree, arr = _tree(B, budget + 1)
        ws, ptr = _workspace(self.lib.emu_d2sd_workspace(B, L1, K, L2, budget))
        self._check(self.lib.emu_d2sd_select(
            _t(trunk_token), _t(trunk_lp), _t(boundary), _t(branch_token), _t(branch_lp),
            ctypes.c_int64(budget), _t(root), arr, ctypes.c_void_p(ptr),
            ctypes.c_size_t(ws.numel() if ptr else 0),
        ))  # fmt: skip
        return tree

    def topk_logprobs(
        self, logits: torch.Tensor, k: int, num_splits: int = 1
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(token, logprob, row_error) like ``ops.topk_logprobs_flagged``."""
        from difftree_rt.ops import ext

        B, L, V = logits.shape
        token = torch.full((B, L, k), 12345, dtype=torch.int32)
        logprob = torch.full((B, L, k), 7.0)
        err = torch.full((B, L), 12345, dtype=torch.int32)
        nbytes = int(ext().topk_logprobs_workspace_bytes(B, L, V, k, num_splits))
        ws = torch.full((max(nbytes, 16) + 16,), 0xAB, dtype=torch.uint8)
        ptr = ws.data_ptr() + (-ws.data_ptr()) % 16  # 16-byte aligned, as the op requires
        self._check(self.lib.emu_topk_logprobs(
            _t(logits.contiguous()), ctypes.c_int64(k), _t(token), _t(logprob), _t(err),
            ctypes.c_int(num_splits), ctypes.c_void_p(ptr if nbytes > 0 else 0),
        ))  # fmt: skip
        return token, logprob, err

    def tree_walk(self, tree, choice, stop=None, remaining=None):  # type: ignore[no-untyped-def]
        arrays = [a.contiguous() for a in tree.arrays()]
        tarr = (EmuTensor * 8)(*[_t(a).contents for a in arrays])  # type: ignore[union-attr]
        B = arrays[0].shape[0]
        P = tree.max_depth + 1
        outs = [torch.full((B, P), 12345, dtype=torch.int32)]
        outs += [torch.full((B,), 12345, dtype=torch.int32) for _ in range(2)]
        outs.append(torch.full((B,), True, dtype=torch.bool))
        oarr = (EmuTensor * 4)(*[_t(o).contents for o in outs])  # type: ignore[union-attr]
        self._check(self.lib.emu_tree_walk(
            tarr, _t(choice.contiguous()), _t(stop), _t(remaining), oarr
        ))  # fmt: skip
        return outs

    def kv_commit(self, caches, base_len, path, accepted, ring=False) -> None:  # type: ignore[no-untyped-def]
        arr = (EmuTensor * len(caches))(*[_t(c).contents for c in caches])  # type: ignore[union-attr]
        self._check(self.lib.emu_kv_commit(
            arr, ctypes.c_int(len(caches)), _t(base_len), _t(path), _t(accepted),
            ctypes.c_int(int(ring)),
        ))  # fmt: skip

    def node_select(self, logits, temperature, top_k, top_p, seed, round_idx):  # type: ignore[no-untyped-def]
        B, N, _ = logits.shape
        out = torch.full((B, N), 12345, dtype=torch.int32)
        self._check(self.lib.emu_node_select(
            _t(logits.contiguous()), _t(temperature), _t(top_k), _t(top_p), _t(seed),
            _t(round_idx), _t(out),
        ))  # fmt: skip
        return out

    def presto_select(
        self, cand_token: torch.Tensor, cand_logprob: torch.Tensor, budget: int,
        context: torch.Tensor, keys: torch.Tensor, counts: torch.Tensor, *, order: int,
        vocab: int, lam: float = 0.2, alpha: float = 1.0, root_token: torch.Tensor | None = None,
    ) -> list[torch.Tensor]:  # fmt: skip
        B, L, K = cand_logprob.shape
        tree, arr = _tree(B, budget + 1)
        ws, ptr = _workspace(self.lib.emu_presto_workspace(B, L, K, budget, order))
        root = None if root_token is None else root_token.contiguous()
        self._check(self.lib.emu_presto_select(
            _t(cand_token.contiguous()), _t(cand_logprob.contiguous()), ctypes.c_int64(budget),
            _t(root), _t(context.contiguous()), _t(keys.contiguous()), _t(counts.contiguous()),
            ctypes.c_int64(order), ctypes.c_double(alpha), ctypes.c_double(lam),
            ctypes.c_int64(vocab), arr, ctypes.c_void_p(ptr),
            ctypes.c_size_t(ws.numel() if ptr else 0),
        ))  # fmt: skip
        return tree

    def ngram_extend(self, keys, counts, history, tokens, num_tokens, order, overflow=None) -> None:  # type: ignore[no-untyped-def]
        """In place on keys, counts, history (and overflow), as ``ops.ngram_extend``."""
        self._check(self.lib.emu_ngram_extend(
            _t(keys), _t(counts), _t(history), _t(tokens.contiguous()),
            _t(num_tokens.contiguous()), ctypes.c_int64(order), _t(overflow),
        ))  # fmt: skip

    # ---- Gated-DeltaNet tree ops (reference/gated_delta.py signatures; outputs pre-filled
    # with garbage, the commits in place).

    def gdn_conv(self, x, conv_tail, weight, bias, src, activation=True):  # type: ignore[no-untyped-def]
        out = torch.full(x.shape, 7.0, dtype=x.dtype)
        self._check(self.lib.emu_gdn_conv(
            _t(x), _t(conv_tail), _t(weight), _t(bias), _t(src), ctypes.c_int(int(activation)),
            _t(out),
        ))  # fmt: skip
        return out

    def gdn_conv_commit(self, conv_tail, x, src, path, accepted, active=None) -> None:  # type: ignore[no-untyped-def]
        self._check(self.lib.emu_gdn_conv_commit(
            _t(conv_tail), _t(x), _t(src), _t(path), _t(accepted), _t(active)
        ))  # fmt: skip

    def gdn_verify(self, q, k, v, g, beta, state, tree_anc):  # type: ignore[no-untyped-def]
        """``(out, k_hat, delta, gcum)`` like ``reference.gdn_verify``."""
        B, N, Hk, Dk = k.shape
        outs = [
            torch.full(v.shape, 7.0, dtype=q.dtype),
            torch.full((B, N, Hk, Dk), 7.0),
            torch.full(v.shape, 7.0),
            torch.full(g.shape, 7.0),
        ]
        oarr = (EmuTensor * 4)(*[_t(o).contents for o in outs])  # type: ignore[union-attr]
        self._check(self.lib.emu_gdn_verify(
            _t(q), _t(k), _t(v), _t(g), _t(beta), _t(state), _t(tree_anc), oarr
        ))  # fmt: skip
        return tuple(outs)

    def gdn_commit(self, state, k_hat, delta, gcum, path, accepted, active=None) -> None:  # type: ignore[no-untyped-def]
        self._check(self.lib.emu_gdn_commit(
            _t(state), _t(k_hat), _t(delta), _t(gcum), _t(path), _t(accepted), _t(active)
        ))  # fmt: skip
