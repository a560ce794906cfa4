"""Reference of ``difftree_rt.ops.topk_logprobs``: the per-depth top-K candidates of a drafter.

Vocabulary: B batch, L draft depth, V vocab, K candidates per depth.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["MIN_LOGPROB", "topk_logprobs"]

#: The floor every log-prob is clamped to (``difftree_rt.ops.MIN_LOGPROB``, the same value;
#: defined here too because the oracle never imports the compiled ops).
MIN_LOGPROB = -1e4


def topk_logprobs(logits: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Reference of :func:`difftree_rt.ops.topk_logprobs`.

    Args:
        logits: ``[B, L, V]``. k: ``1..V``.
    Returns:
        ``(token int32 [B, L, K], logprob float32 [B, L, K])``.
    """
    x = logits.float()
    if torch.isnan(x).any() or (x == float("inf")).any():
        raise ValueError("logits: expected finite values or -inf")
    # Log-sum-exp in f64, rounded to f32 once; then one f32 subtraction per entry.
    lse = torch.logsumexp(x.double(), dim=-1, keepdim=True).float()
    lp = (x - lse).clamp_min(MIN_LOGPROB)
    # A stable descending sort keeps equal log-probs in token-id order: ties -> lower id.
    lp_sorted, idx = torch.sort(lp, dim=-1, descending=True, stable=True)
    return idx[..., :k].to(torch.int32), lp_sorted[..., :k].contiguous()
