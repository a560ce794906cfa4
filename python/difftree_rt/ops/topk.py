"""Per-depth top-K of the fp32 log-softmax (cpu/topk_logprobs.cpp, cuda/topk_logprobs.cu)."""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor

from .._ext import dl, dl_opt, ext, require_tensor, stream_of
from ._custom import cuda_workspace, custom_op

MIN_LOGPROB = -1e4


def _topk_workspace(C: Any, logits: Tensor, k: int, num_splits: int) -> Optional[Tensor]:
    """Split-row scratch for the CUDA kernel (None for num_splits == 1 and on the CPU)."""
    if num_splits == 1:
        return None
    B, L, V = logits.shape
    return cuda_workspace(logits, lambda: C.topk_logprobs_workspace_bytes(B, L, V, k, num_splits))


def _topk_outputs(logits: Tensor, k: int) -> tuple[Tensor, Tensor]:
    B, L, _ = logits.shape
    return (
        logits.new_empty((B, L, k), dtype=torch.int32),
        logits.new_empty((B, L, k), dtype=torch.float32),
    )


def _topk_fake(logits: Tensor, k: int, num_splits: int = 0) -> tuple[Tensor, Tensor]:
    return _topk_outputs(logits, k)


@custom_op("topk_logprobs", fake=_topk_fake)
def _topk_logprobs(logits: Tensor, k: int, num_splits: int = 0) -> tuple[Tensor, Tensor]:
    C = ext()
    x = dl(logits)
    C.check_topk_logprobs(x, k)
    token, logprob = _topk_outputs(logits, k)
    if num_splits == 1:
        C.topk_logprobs(x, k, dl(token), dl(logprob), stream_of(logits))
    else:
        workspace = _topk_workspace(C, logits, k, num_splits)
        C.topk_logprobs_split(
            x, k, dl(token), dl(logprob), None, num_splits, dl_opt(workspace), stream_of(logits)
        )
    return token, logprob


def topk_logprobs(logits: Tensor, k: int, num_splits: int = 0) -> tuple[Tensor, Tensor]:
    """Per-depth top-K of the fp32 log-softmax.

    Args:
        logits: ``[B, L, V]`` float32/float16/bfloat16, finite or -inf (NaN/+inf rejected).
        k: candidates per depth, ``1 <= k <= V``.
        num_splits: CUDA only (ignored on the CPU). 0 (default): automatic
            (:func:`topk_logprobs_num_splits`; ~9x faster than one CTA per row at V = 151936 on
            an H100). 1: one CTA per row. > 1: each row's V split over that many CTAs plus a
            per-row merge (a scratch buffer is allocated). Same tokens whatever the split;
            log-probs equal or, rarely, one f32 ulp apart (docs/NOTES.md).

    Returns:
        ``(token int32 [B, L, K], logprob float32 [B, L, K])`` sorted by log-prob descending,
        ties to the lower token id, log-probs clamped below at -1e4.
    """
    require_tensor(logits, "logits")
    return _topk_logprobs(logits, int(k), int(num_splits))


def topk_logprobs_flagged(
    logits: Tensor, k: int, num_splits: int = 0
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`topk_logprobs` plus an int32 ``[B, L]`` per-row error flag (0 good, 1 NaN/+inf,
    2 all -inf). On CUDA bad rows are flagged instead of raising (raising would need a host
    sync); their outputs are tokens ``0..K-1`` with log-prob -1e4. On the CPU bad rows raise."""
    require_tensor(logits, "logits")
    C = ext()
    x = dl(logits)
    C.check_topk_logprobs(x, int(k))
    B, L, _ = logits.shape
    token = torch.empty((B, L, k), dtype=torch.int32, device=logits.device)
    logprob = torch.empty((B, L, k), dtype=torch.float32, device=logits.device)
    err = torch.empty((B, L), dtype=torch.int32, device=logits.device)
    if int(num_splits) == 1:
        C.topk_logprobs_flagged(x, int(k), dl(token), dl(logprob), dl(err), stream_of(logits))
    else:
        workspace = _topk_workspace(C, logits, int(k), int(num_splits))
        C.topk_logprobs_split(
            x,
            int(k),
            dl(token),
            dl(logprob),
            dl(err),
            int(num_splits),
            dl_opt(workspace),
            stream_of(logits),
        )
    return token, logprob, err


def topk_logprobs_num_splits(logits: Tensor, k: int) -> int:
    """The split count ``num_splits=0`` picks for these shapes (CUDA)."""
    B, L, V = logits.shape
    return int(ext().topk_logprobs_num_splits(B, L, V, int(k)))


def topk_logprobs_workspace_bytes(logits: Tensor, k: int, num_splits: int) -> int:
    """Bytes of split-row scratch the CUDA :func:`topk_logprobs` allocates for these shapes."""
    B, L, V = logits.shape
    return int(ext().topk_logprobs_workspace_bytes(B, L, V, int(k), int(num_splits)))
