"""PRESTO: the n-gram prior's count tables and the selector that reads them (ALGORITHMS.md §7;
cpu/presto.cpp, cuda/presto.cu)."""

from __future__ import annotations

from typing import Optional

from torch import Tensor

from .._ext import dl, dl_opt, ext, require_tensors, stream_of
from ..tree import DraftTree
from ._custom import TreeArrays, cuda_workspace, custom_op, empty_tree


def ngram_update(keys: Tensor, counts: Tensor, tokens: Tensor, start: int, order: int) -> int:
    """Add the n-grams (lengths ``1..order``) ending at ``tokens[start:]`` to the count table
    ``(keys int64 [H], counts int32 [H])`` in place; ``tokens[:start]`` is history only (CPU).

    Returns the number of newly used slots. Raises ``ValueError`` when the table is full (keep
    its load below 1/2; ``difftree_rt.policies.NGramPrior`` grows it for you).
    """
    require_tensors(keys=keys, counts=counts, tokens=tokens)
    return int(ext().ngram_update(dl(keys), dl(counts), dl(tokens), int(start), int(order)))


def _ngram_extend_fake(
    keys: Tensor, counts: Tensor, history: Tensor, tokens: Tensor, num_tokens: Tensor,
    order: int, overflow: Optional[Tensor],
) -> None:  # fmt: skip
    return None


@custom_op(
    "ngram_extend",
    fake=_ngram_extend_fake,
    mutates_args=("keys", "counts", "history", "overflow"),
)
def _ngram_extend(
    keys: Tensor,
    counts: Tensor,
    history: Tensor,
    tokens: Tensor,
    num_tokens: Tensor,
    order: int,
    overflow: Optional[Tensor],
) -> None:
    C = ext()
    C.ngram_extend(  # validates first (dispatch layer)
        dl(keys), dl(counts), dl(history), dl(tokens), dl(num_tokens), order, dl_opt(overflow),
        stream_of(tokens),
    )  # fmt: skip


def ngram_extend(
    keys: Tensor,
    counts: Tensor,
    history: Tensor,
    tokens: Tensor,
    num_tokens: Tensor,
    order: int,
    overflow: Tensor | None = None,
) -> None:
    """Continue each request's n-gram table with its newly committed tokens, in place.

    Request b's stream goes on with ``tokens[b, :num_tokens[b]]``: the n-grams (lengths
    ``1..order``) ending at those tokens are added to table b (their contexts may reach back
    into ``history[b]``), and ``history[b]`` becomes the stream's new last ``order - 1`` tokens.
    Graph-safe on CUDA (no host sync, fixed shapes); the engine calls it once per round with the
    emitted tokens.

    Args:
        keys, counts: int64 / int32 ``[B, H]`` count tables (H a power of two; zeros = empty).
            Size them for the stream: each token adds at most ``2 * order`` keys and the load
            should stay below 1/2, so ``H >= 4 * order * tokens`` never fills.
        history: int64 ``[B, order - 1]`` the last tokens so far, -1 (none yet) on the left.
        tokens: ``[B, T]`` int32/int64; entries past ``num_tokens[b]`` are ignored.
        num_tokens: ``[B]`` int32/int64 in ``[0, T]``.
        order: n of the n-gram model (1..8).
        overflow: optional int32 ``[B]``: on CUDA an insert into a full table is dropped and
            sets ``overflow[b] = 1`` (the CPU op raises ``ValueError`` instead).

    Raises:
        ValueError / TypeError naming the argument (shapes, dtypes, devices; on the CPU also
        token values and a full table).
    """
    require_tensors(
        keys=keys, counts=counts, history=history, tokens=tokens, num_tokens=num_tokens,
        overflow=overflow, optional=("overflow",),
    )  # fmt: skip
    _ngram_extend(keys, counts, history, tokens, num_tokens, int(order), overflow)


def _presto_fake(
    cand_token: Tensor, cand_logprob: Tensor, budget: int, root_token: Optional[Tensor],
    context: Tensor, keys: Tensor, counts: Tensor, order: int, alpha: float, lam: float,
    vocab: int,
) -> TreeArrays:  # fmt: skip
    return empty_tree(cand_logprob, budget)


@custom_op("presto_select", fake=_presto_fake)
def _presto_select(
    cand_token: Tensor,
    cand_logprob: Tensor,
    budget: int,
    root_token: Optional[Tensor],
    context: Tensor,
    keys: Tensor,
    counts: Tensor,
    order: int,
    alpha: float,
    lam: float,
    vocab: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    C = ext()
    inputs = (
        dl(cand_token),
        dl(cand_logprob),
        budget,
        dl_opt(root_token),
        dl(context),
        dl(keys),
        dl(counts),
        order,
        alpha,
        lam,
        vocab,
    )
    C.check_presto_select(*inputs)
    arrays = empty_tree(cand_logprob, budget)
    workspace = cuda_workspace(
        cand_logprob,
        lambda: C.presto_select_workspace_bytes(*cand_logprob.shape, budget, order),
    )
    C.presto_select(
        *inputs, tuple(dl(a) for a in arrays), stream_of(cand_logprob), dl_opt(workspace)
    )
    return arrays


def presto_select_from_candidates(
    cand_token: Tensor,
    cand_logprob: Tensor,
    budget: int,
    context: Tensor,
    keys: Tensor,
    counts: Tensor,
    *,
    order: int,
    vocab: int,
    lam: float = 0.2,
    alpha: float = 1.0,
    root_token: Tensor | None = None,
) -> DraftTree:
    """PRESTO (ALGORITHMS.md §7): best-first selection with per-parent normalised edge scores
    ``log q + λ log p_a(t | path) - log Z(parent)`` from an n-gram prior (cpu/presto.cpp).

    Args:
        cand_token, cand_logprob: ``[B, L, K]`` candidates (CPU or CUDA; on CUDA the candidates
            and the table are trusted, not validated, since that would need a host sync).
        budget: draft nodes, 1..4096.
        context: ``[B, order - 1]`` the last tokens of each stream ending with the root token,
            left-padded with -1.
        keys, counts: the n-gram count table: int64 / int32 ``[H]`` shared by the batch
            (``difftree_rt.policies.NGramPrior``) or ``[B, H]``, one per request
            (:func:`ngram_extend`).
        order, vocab, lam, alpha: n, V, λ and the smoothing mass α.
        root_token: optional ``[B]`` bonus tokens.

    Returns:
        A :class:`DraftTree` (capacity ``budget + 1``), bit-identical to
        ``difftree_rt.reference.policies.presto_select_from_candidates``; ``lam=0`` gives the
        DDTree tree exactly.
    """
    require_tensors(
        cand_token=cand_token,
        cand_logprob=cand_logprob,
        context=context,
        keys=keys,
        counts=counts,
        root_token=root_token,
        optional=("root_token",),
    )
    arrays = _presto_select(
        cand_token, cand_logprob, int(budget), root_token, context, keys, counts,
        int(order), float(alpha), float(lam), int(vocab),
    )  # fmt: skip
    return DraftTree.from_arrays(arrays, max_depth=int(cand_logprob.shape[1]))
