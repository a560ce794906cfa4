"""The per-request state of a target's Gated-DeltaNet layers, and its commit.

Vocabulary: B batch, N rows of one forward, C conv channels, K conv width, H_k / H_v key / value
heads, D_k / D_v their dims, P path columns.

A linear-attention layer caches no rows: per request a conv tail ``[B, C, K - 1]`` (the model's
dtype) and a recurrent state ``[B, H_v, D_k, D_v]`` (fp32), both at fixed addresses. A verify
forward leaves them untouched and keeps what the commit needs (the rows' pre-conv inputs, their
conv sources, normalised keys, deltas and path-cumulative decays); :meth:`LinearStates.commit`
then advances both states along the accepted path without another forward (docs/NOTES.md
"Gated-DeltaNet trees"). Causal forwards that commit as they go (prefill, AR decode) commit each
chunk inside the forward.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

import torch
from torch import Tensor

from .target_layers import LayerSpec

__all__ = ["LinearStates", "PendingRows", "gdn_ops"]


def gdn_ops() -> ModuleType:
    """``difftree_rt.ops`` (C++ CPU / CUDA) when the extension provides the Gated-DeltaNet ops,
    else the plain-PyTorch reference (same functions, same semantics)."""
    try:
        from .. import ops
        from .._ext import ext

        if hasattr(ops, "gdn_verify") and hasattr(ext(), "gdn_verify"):
            return ops
    except ImportError:
        pass
    from ..reference import gated_delta

    return gated_delta


@dataclass
class PendingRows:
    """What a verify forward of one layer leaves for its commit.

    Attributes:
        x: ``[B, N, C]`` pre-conv rows; src: ``[B, N, K]`` int32 conv sources.
        k_hat: ``[B, N, H_k, D_k]``; delta: ``[B, N, H_v, D_v]``; gcum: ``[B, N, H_v]`` (fp32).
    """

    x: Tensor
    src: Tensor
    k_hat: Tensor
    delta: Tensor
    gcum: Tensor


class LinearStates:
    """Conv tails and recurrent states of every linear-attention layer of a target.

    Args:
        specs: every decoder layer's spec (only ``kind == "linear_attention"`` ones hold state).
        batch_size: B. dtype: the conv tail's dtype (the model's). device: where both live.
    """

    def __init__(
        self, specs: list[LayerSpec], batch_size: int, dtype: torch.dtype, device: torch.device
    ) -> None:
        self.conv: dict[int, Tensor] = {}
        self.state: dict[int, Tensor] = {}
        for spec in specs:
            lin = spec.linear
            if lin is None:
                continue
            self.conv[spec.index] = torch.zeros(
                (batch_size, lin.channels, lin.kernel - 1), dtype=dtype, device=device
            )
            self.state[spec.index] = torch.zeros(
                (batch_size, lin.value_heads, lin.key_dim, lin.value_dim),
                dtype=torch.float32,
                device=device,
            )
        self.pending: dict[int, PendingRows] = {}

    def __bool__(self) -> bool:
        return bool(self.state)

    def tensors(self) -> list[Tensor]:
        """Every state tensor (what a round mutates in place, in layer order)."""
        return [t for i in sorted(self.state) for t in (self.conv[i], self.state[i])]

    def reset(self) -> None:
        """Zero every state: an empty context (transformers starts from zeros too)."""
        for t in self.tensors():
            t.zero_()
        self.pending.clear()

    def commit(self, path: Tensor, accepted: Tensor, active: Tensor | None) -> None:
        """Advance every layer's states along the accepted path of the last verify.

        Args:
            path: ``[B, P]`` node ids (``path[:, 0] == 0``); accepted: ``[B]``; active: ``[B]``
                bool or None (inactive requests keep their states).
        """
        if not self.state:
            return
        if len(self.pending) != len(self.state):
            raise RuntimeError("linear-attention commit without a preceding verify forward")
        ops = gdn_ops()
        for i, rows in self.pending.items():
            ops.gdn_conv_commit(self.conv[i], rows.x, rows.src, path, accepted, active)
            ops.gdn_commit(
                self.state[i], rows.k_hat, rows.delta, rows.gcum, path, accepted, active
            )
        self.pending.clear()
