"""Engine policy ``presto`` (DESIGN.md §4): DDTree's best-first order re-weighted by a
prefix n-gram prior, on top of the core's selector.

Vocabulary: B batch, L draft depth, K candidates per depth,
V vocabulary, N tree capacity (budget + 1), H n-gram table slots.

Each request's n-gram table lives on the device (:class:`PrestoStream`, extended every round by
``ngram_extend`` with the emitted tokens) and ``presto_select`` reads it there
(cuda/presto.cu), so no round copies anything to the host and graph mode captures it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..tree import DraftTree
from ._validate import check_float, check_int
from .base import DraftPolicy, PolicyInput, PolicyNeeds

__all__ = ["PrestoPolicy", "PrestoStream", "presto_table_size"]


def presto_table_size(order: int, max_tokens: int) -> int:
    """H, the slots of one request's n-gram table for a stream of up to ``max_tokens`` tokens:
    each token adds at most ``2 * order`` keys, and a load of at most 1/2 keeps probing short
    and the table never full."""
    need = 4 * order * max(1, int(max_tokens))
    return max(16, 1 << (need - 1).bit_length())


@dataclass
class PrestoStream:
    """The device state of :class:`PrestoPolicy` for a batch of B streams (fixed addresses, so
    graph mode captures them): the n-gram tables and each stream's last ``order - 1`` tokens.

    Attributes:
        keys, counts: int64 / int32 ``[B, H]`` count tables (``ops.ngram_extend``).
        history: int64 ``[B, order - 1]``: each stream's last tokens (the root last), -1 padded.
        overflow: int32 ``[B]``: set on CUDA if a table ever filled (sized so it cannot).
    """

    keys: torch.Tensor
    counts: torch.Tensor
    history: torch.Tensor
    overflow: torch.Tensor

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor a round changes (graph mode saves them around capture warm-up)."""
        return [self.keys, self.counts, self.history, self.overflow]


class PrestoPolicy(DraftPolicy):
    """PRESTO (ALGORITHMS.md §7): best-first over ``log q + λ log p_a(t | path)`` (per-parent
    normalised) with an incremental n-gram prior over the prompt and the generated tokens.

    Args:
        budget: draft nodes per round.
        lam: λ, finite and >= 0 (0 gives DDTree exactly).
        order: n of the n-gram prior, in [1, 8].
        alpha: additive smoothing mass α, finite and > 0 (interpolation toward the lower order).
        k: candidates per depth, >= 1 (capped at ``min(budget, V)``; None: that cap, as
            DDTree).

    The prior is per request and on the draft logits' device: the engine opens a
    :class:`PrestoStream` per call (:meth:`start_stream` counts the prompts and the first
    token) and extends it with each round's emitted tokens (:meth:`extend_stream`), so a
    request in a batch gets exactly its solo tree, and a round reads no host value
    (``needs.graph_safe``).
    """

    name = "presto"
    needs = PolicyNeeds(graph_safe=True, tracks_stream=True)

    def __init__(
        self,
        budget: int = 64,
        *,
        lam: float = 0.2,
        order: int = 3,
        alpha: float = 1.0,
        k: int | None = None,
    ) -> None:
        super().__init__(budget)
        self.lam = check_float("lam", lam, lo=0.0)
        self.alpha = check_float("alpha", alpha, lo=0.0, lo_open=True)
        self.order = check_int("order", order, 1, 8)
        self.k = None if k is None else check_int("k", k, 1)

    # ---- the stream (engine hooks, see DraftPolicy) ------------------------------------------
    def new_stream(
        self, batch_size: int, max_tokens: int, device: torch.device | str
    ) -> PrestoStream:
        size = presto_table_size(self.order, max_tokens)
        return PrestoStream(
            keys=torch.zeros(batch_size, size, dtype=torch.int64, device=device),
            counts=torch.zeros(batch_size, size, dtype=torch.int32, device=device),
            history=torch.full((batch_size, self.order - 1), -1, dtype=torch.int64, device=device),
            overflow=torch.zeros(batch_size, dtype=torch.int32, device=device),
        )

    def start_stream(
        self, stream: PrestoStream, tokens: torch.Tensor, lengths: torch.Tensor
    ) -> None:
        from .. import ops

        stream.keys.zero_()
        stream.counts.zero_()
        stream.history.fill_(-1)
        stream.overflow.zero_()
        ops.ngram_extend(
            stream.keys, stream.counts, stream.history, tokens, lengths, self.order,
            stream.overflow,
        )  # fmt: skip

    def extend_stream(
        self, stream: PrestoStream, tokens: torch.Tensor, counts: torch.Tensor
    ) -> None:
        from .. import ops

        ops.ngram_extend(
            stream.keys, stream.counts, stream.history, tokens, counts, self.order,
            stream.overflow,
        )  # fmt: skip

    # ---- selection --------------------------------------------------------------------------
    def select(self, inputs: PolicyInput) -> DraftTree:
        from .. import ops

        stream = inputs.stream
        if not isinstance(stream, PrestoStream):
            raise ValueError(
                "presto needs PolicyInput.stream (its PrestoStream: new_stream + start_stream, "
                "extended with every round's emitted tokens)"
            )
        logits = inputs.draft_logits
        B, _, V = logits.shape
        if stream.keys.shape[0] != B or stream.keys.device != logits.device:
            raise ValueError(
                f"presto: the stream holds {stream.keys.shape[0]} tables on "
                f"{stream.keys.device}, the draft logits are [B={B}, ...] on {logits.device}"
            )
        k = max(1, min(self.k or self.budget, self.budget, V))
        token, logprob = ops.topk_logprobs(logits, k)
        return ops.presto_select_from_candidates(
            token, logprob, self.budget, stream.history, stream.keys, stream.counts,
            order=self.order, vocab=V, lam=self.lam, alpha=self.alpha,
            root_token=inputs.root_token,
        )  # fmt: skip

    def __repr__(self) -> str:
        return (
            f"PrestoPolicy(budget={self.budget}, lam={self.lam}, order={self.order}, "
            f"alpha={self.alpha})"
        )
