"""One target token per tree node: greedy argmax or a keyed draw (ALGORITHMS.md §3;
cpu/node_select.cpp, cuda/node_select.cu)."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .._ext import dl, dl_opt, ext, require_tensor, stream_of
from ._custom import custom_op


def _node_select_fake(
    logits: Tensor,
    temperature: Optional[Tensor],
    top_k: Optional[Tensor],
    top_p: Optional[Tensor],
    seed: Optional[Tensor],
    round_idx: Optional[Tensor],
) -> Tensor:
    return logits.new_empty(logits.shape[:2], dtype=torch.int32)


@custom_op("node_select", fake=_node_select_fake)
def _node_select(
    logits: Tensor,
    temperature: Optional[Tensor],
    top_k: Optional[Tensor],
    top_p: Optional[Tensor],
    seed: Optional[Tensor],
    round_idx: Optional[Tensor],
) -> Tensor:
    C = ext()
    params = tuple(dl_opt(t) for t in (temperature, top_k, top_p, seed, round_idx))
    x = dl(logits)
    C.check_node_select(x, *params)
    out = torch.empty(logits.shape[:2], dtype=torch.int32, device=logits.device)
    C.node_select(x, *params, dl(out), stream_of(logits))
    return out


def _per_request(
    x: Tensor | float | int | None, B: int, dtype: torch.dtype, device: torch.device, name: str
) -> Tensor | None:
    if x is None or isinstance(x, Tensor):
        return x
    if not isinstance(x, (int, float)):
        raise TypeError(f"{name}: expected a [B] tensor or a number, got {type(x).__name__}")
    return torch.full((B,), x, dtype=dtype, device=device)


def node_select(
    logits: Tensor,
    temperature: Tensor | float | None = None,
    top_k: Tensor | int | None = None,
    top_p: Tensor | float | None = None,
    seed: Tensor | int | None = None,
    round_idx: Tensor | int | None = None,
) -> Tensor:
    """One target token per tree node (ALGORITHMS.md §3): greedy argmax or a keyed draw.

    Args:
        logits: ``[B, N, V]`` float32/float16/bfloat16 target logits at the tree nodes.
        temperature: ``[B]`` float32 (or a number); ``<= 0`` or None: greedy, ties to the lowest
            token id.
        top_k: ``[B]`` int32/int64; ``<= 0`` or ``>= V``: off.
        top_p: ``[B]`` float32; ``>= 1``: off.
        seed, round_idx: ``[B]`` int32/int64; node i's draw is keyed by (seed, round, i), so a
            run is reproducible and a captured graph replays with new values written in place.

    Returns:
        int32 ``[B, N]``. Sampling is Gumbel-max over the temperature-scaled, top-k- then
        top-p-filtered logits with Philox-4x32-10 uniforms (cuda/sampling_math.h); reference, CPU
        and CUDA give bit-identical draws. Pass tensors on the hot path: numbers become new
        device tensors (a host-to-device copy) each call.
    """
    require_tensor(logits, "logits")
    B = int(logits.shape[0]) if logits.dim() == 3 else 0
    dev = logits.device
    args = (
        _per_request(temperature, B, torch.float32, dev, "temperature"),
        _per_request(top_k, B, torch.int64, dev, "top_k"),
        _per_request(top_p, B, torch.float32, dev, "top_p"),
        _per_request(seed, B, torch.int64, dev, "seed"),
        _per_request(round_idx, B, torch.int64, dev, "round_idx"),
    )
    return _node_select(logits, *args)
