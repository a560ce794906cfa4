"""difftree_rt operations: torch-facing, registered with ``torch.library`` (schema + fake
implementation) so they work under ``torch.compile``. All validation happens in the C++ core;
this module only allocates outputs and hands tensors over through DLPack.

Vocabulary: B batch, L draft depth, K candidates per depth, V vocabulary, N tree capacity
(budget + 1), P path columns (L + 1).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Optional

import torch
from torch import Tensor

from ._ext import dl, dl_opt, ext, require_tensor, require_tensors, stream_of
from .tree import MAX_BUDGET, DraftTree, anc_words

__all__ = [
    "MAX_BUDGET",
    "WalkResult",
    "d2sd_boundaries",
    "d2sd_select",
    "ddtree_select",
    "ddtree_select_from_candidates",
    "kv_commit",
    "node_select",
    "topk_logprobs",
    "tree_attention",
    "tree_attention_mask",
    "tree_positions",
    "tree_walk",
]

MIN_LOGPROB = -1e4

_TREE_FIELDS = (
    "token",
    "parent",
    "depth",
    "score",
    "first_child",
    "next_sibling",
    "anc",
    "num_nodes",
)
_TreeArrays = tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]


def _call(op: Any, registered: Any, *args: Any) -> Any:
    """Run a custom op: through the dispatcher when tracing (torch.compile sees the registered
    op), directly in eager mode, where the dispatcher adds ~10 µs per call and nothing else."""
    eager = getattr(op, "_init_fn", None)  # the undecorated function (torch >= 2.4)
    if eager is None or torch.compiler.is_compiling():
        return registered(*args)
    return eager(*args)


# ---- topk_logprobs -------------------------------------------------------------------------


def _cuda_workspace(ref: Tensor, size: Callable[[], int]) -> Optional[Tensor]:
    """Scratch for a CUDA kernel: ``size()`` bytes (uint8) on ``ref``'s device; None on the CPU
    (no CPU path needs one, and ``size`` is not evaluated there) or when ``size()`` is 0."""
    if not ref.is_cuda:
        return None
    nbytes = int(size())
    return torch.empty(nbytes, dtype=torch.uint8, device=ref.device) if nbytes > 0 else None


def _topk_workspace(C: Any, logits: Tensor, k: int, num_splits: int) -> Optional[Tensor]:
    """Split-row scratch for the CUDA kernel (None for num_splits == 1 and on the CPU)."""
    if num_splits == 1:
        return None
    B, L, V = logits.shape
    return _cuda_workspace(logits, lambda: C.topk_logprobs_workspace_bytes(B, L, V, k, num_splits))


@torch.library.custom_op("difftree::topk_logprobs", mutates_args=())
def _topk_logprobs(logits: Tensor, k: int, num_splits: int = 0) -> tuple[Tensor, Tensor]:
    C = ext()
    x = dl(logits)
    C.check_topk_logprobs(x, k)
    B, L, _ = logits.shape
    token = torch.empty((B, L, k), dtype=torch.int32, device=logits.device)
    logprob = torch.empty((B, L, k), dtype=torch.float32, device=logits.device)
    if num_splits == 1:
        C.topk_logprobs(x, k, dl(token), dl(logprob), stream_of(logits))
    else:
        workspace = _topk_workspace(C, logits, k, num_splits)
        C.topk_logprobs_split(
            x, k, dl(token), dl(logprob), None, num_splits, dl_opt(workspace), stream_of(logits)
        )
    return token, logprob


@_topk_logprobs.register_fake
def _(logits: Tensor, k: int, num_splits: int = 0) -> tuple[Tensor, Tensor]:
    B, L, _ = logits.shape
    return (
        logits.new_empty((B, L, k), dtype=torch.int32),
        logits.new_empty((B, L, k), dtype=torch.float32),
    )


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
    return _call(_topk_logprobs, torch.ops.difftree.topk_logprobs, logits, int(k), int(num_splits))


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


# ---- ddtree_select -------------------------------------------------------------------------


def _empty_tree(ref: Tensor, B: int, N: int) -> _TreeArrays:
    def i32(*shape: int) -> Tensor:
        return ref.new_empty(shape, dtype=torch.int32)

    score = ref.new_empty((B, N), dtype=torch.float32)
    return (
        i32(B, N),
        i32(B, N),
        i32(B, N),
        score,
        i32(B, N),
        i32(B, N),
        i32(B, N, anc_words(N)),
        i32(B),
    )


@torch.library.custom_op("difftree::ddtree_select", mutates_args=())
def _ddtree_select(
    cand_token: Tensor, cand_logprob: Tensor, budget: int, root_token: Optional[Tensor]
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    C = ext()
    inputs = (dl(cand_token), dl(cand_logprob), budget, dl_opt(root_token))
    C.check_ddtree_select(*inputs)
    arrays = _empty_tree(cand_logprob, cand_logprob.shape[0], budget + 1)
    workspace = _cuda_workspace(
        cand_logprob, lambda: C.ddtree_select_workspace_bytes(*cand_logprob.shape, budget)
    )
    C.ddtree_select(
        *inputs, tuple(dl(a) for a in arrays), stream_of(cand_logprob), dl_opt(workspace)
    )
    return arrays


@_ddtree_select.register_fake
def _(
    cand_token: Tensor, cand_logprob: Tensor, budget: int, root_token: Optional[Tensor]
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    return _empty_tree(cand_logprob, cand_logprob.shape[0], budget + 1)


def ddtree_select_from_candidates(
    cand_token: Tensor, cand_logprob: Tensor, budget: int, root_token: Tensor | None = None
) -> DraftTree:
    """DDTree: the exact top-``budget`` prefixes by cumulative draft log-prob (ALGORITHMS.md §2).

    Args:
        cand_token: ``[B, L, K]`` int32/int64, distinct per depth.
        cand_logprob: float32 ``[B, L, K]``, finite, ``<= 0``, non-increasing along K.
        budget: draft nodes, 1..4096 (the root is extra: capacity ``N = budget + 1``).
        root_token: optional ``[B]`` bonus tokens for node 0 (else -1).

    Returns:
        A :class:`DraftTree` in best-first order. Tie-break: higher score, then smaller depth,
        then earlier parent, then smaller candidate rank.
    """
    require_tensors(
        cand_token=cand_token,
        cand_logprob=cand_logprob,
        root_token=root_token,
        optional=("root_token",),
    )
    arrays = _call(
        _ddtree_select,
        torch.ops.difftree.ddtree_select,
        cand_token,
        cand_logprob,
        int(budget),
        root_token,
    )
    return DraftTree.from_arrays(arrays, max_depth=int(cand_logprob.shape[1]))


def ddtree_select(draft_logits: Tensor, budget: int, root_token: Tensor | None = None) -> DraftTree:
    """DDTree from the drafter's logits: per-depth top-``min(budget, V)`` candidates, then
    :func:`ddtree_select_from_candidates`.

    Args:
        draft_logits: ``[B, L, V]`` float32/float16/bfloat16 (depth 1..L).
        budget: draft nodes, 1..4096.
        root_token: optional ``[B]`` bonus tokens for node 0.
    """
    require_tensor(draft_logits, "draft_logits")
    V = draft_logits.shape[-1] if draft_logits.dim() > 0 else 1
    # The best `budget` prefixes never use more than `budget` tokens per depth. Clamping keeps an
    # out-of-range budget for the selector to report by name.
    k = max(1, min(int(budget), int(V)))
    token, logprob = topk_logprobs(draft_logits, k)
    return ddtree_select_from_candidates(token, logprob, budget, root_token)


# ---- positions and masks (plain torch: cheap, any device, compile-friendly) ------------------


def _base_len_tensor(base_len: Tensor | int, B: int, device: torch.device) -> Tensor:
    if isinstance(base_len, Tensor):
        if base_len.shape != (B,):
            raise ValueError(f"base_len: expected shape [B] = [{B}], got {list(base_len.shape)}")
        return base_len.to(device=device, dtype=torch.int64)
    return torch.full((B,), int(base_len), dtype=torch.int64, device=device)


def tree_positions(tree: DraftTree, base_len: Tensor | int) -> Tensor:
    """Position ids of the tree nodes: int64 ``[B, N]`` = ``base_len + depth``.

    Args:
        tree: the draft tree.
        base_len: committed context length, an int or ``[B]`` tensor (the root's position).
    """
    base = _base_len_tensor(base_len, tree.batch_size, tree.device)
    return base[:, None] + tree.depth.to(torch.int64)


def tree_anc_dense(tree: DraftTree) -> Tensor:
    """bool ``[B, N, N]``: entry (i, j) is True iff j is i or an ancestor of i."""
    N = tree.capacity
    j = torch.arange(N, device=tree.device)
    words = tree.anc[:, :, j // 32]  # [B, N, N]
    return ((words >> (j % 32).to(torch.int32)) & 1).bool()


def tree_attention_mask(
    tree: DraftTree,
    base_len: Tensor | int,
    kv_len: int | None = None,
    dtype: torch.dtype = torch.bool,
) -> Tensor:
    """Dense attention mask for PyTorch paths (SDPA/eager) over a static cache where tree node
    i's K/V sits at row ``base_len + i``: the committed prefix ``[0, base_len)`` fully visible,
    ancestor-or-self inside the tree, nothing else.

    Args:
        tree: the draft tree (N nodes).
        base_len: committed length, int or ``[B]``.
        kv_len: key length of the mask; default ``max(base_len) + N`` (a host read when
            ``base_len`` is a tensor: pass it explicitly on the hot path).
        dtype: ``torch.bool`` (True = visible) or a float dtype (additive: 0 or -inf).

    Returns:
        ``[B, 1, N, kv_len]``.
    """
    B, N = tree.batch_size, tree.capacity
    base = _base_len_tensor(base_len, B, tree.device)
    if kv_len is None:
        kv_len = int(base.max().item()) + N
    col = torch.arange(kv_len, device=tree.device)[None, None, :]  # [1, 1, S]
    prefix = col < base[:, None, None]  # [B, 1, S]
    rel = col - base[:, None, None]  # tree slot of each column
    in_tree = (rel >= 0) & (rel < N)
    anc = tree_anc_dense(tree)  # [B, N, N]
    gathered = torch.gather(anc, 2, rel.clamp(0, N - 1).expand(B, N, kv_len))
    mask = (prefix.expand(B, N, kv_len) | (in_tree & gathered))[:, None]
    if dtype == torch.bool:
        return mask
    zero = torch.zeros((), dtype=dtype, device=tree.device)
    neg = torch.full((), float("-inf"), dtype=dtype, device=tree.device)
    return torch.where(mask, zero, neg)


# ---- tree_walk -----------------------------------------------------------------------------


class WalkResult(NamedTuple):
    """Outcome of one acceptance walk.

    path: int32 ``[B, L + 1]`` accepted node indices (``path[:, 0] = 0``), -1 after them.
    accepted: int32 ``[B]`` accepted draft nodes.
    next_token: int32 ``[B]`` the target's token after the path (next bonus), -1 if the
        sequence ended first.
    done: bool ``[B]`` a stop token was emitted or the remaining-token cap reached.
    """

    path: Tensor
    accepted: Tensor
    next_token: Tensor
    done: Tensor


@torch.library.custom_op("difftree::tree_walk", mutates_args=())
def _tree_walk(
    token: Tensor,
    parent: Tensor,
    depth: Tensor,
    score: Tensor,
    first_child: Tensor,
    next_sibling: Tensor,
    anc: Tensor,
    num_nodes: Tensor,
    node_choice: Tensor,
    path_len: int,
    stop_tokens: Optional[Tensor],
    remaining: Optional[Tensor],
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    C = ext()
    tree = tuple(
        dl(a) for a in (token, parent, depth, score, first_child, next_sibling, anc, num_nodes)
    )
    inputs = (tree, dl(node_choice), dl_opt(stop_tokens), dl_opt(remaining))
    C.check_tree_walk(*inputs)
    path, accepted, next_token, done = _walk_outputs(token, path_len)
    C.tree_walk(
        *inputs,
        dl(path),
        dl(accepted),
        dl(next_token),
        dl(done),
        stream_of(token),
    )
    return path, accepted, next_token, done


def _walk_outputs(token: Tensor, path_len: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    B = token.shape[0]
    return (
        token.new_empty((B, path_len), dtype=torch.int32),
        token.new_empty((B,), dtype=torch.int32),
        token.new_empty((B,), dtype=torch.int32),
        token.new_empty((B,), dtype=torch.bool),
    )


@_tree_walk.register_fake
def _(
    token,
    parent,
    depth,
    score,
    first_child,
    next_sibling,
    anc,
    num_nodes,
    node_choice,
    path_len,
    stop_tokens,
    remaining,
):
    return _walk_outputs(token, path_len)


def tree_walk(
    tree: DraftTree,
    node_choice: Tensor,
    stop_token_ids: Tensor | Sequence[int] | None = None,
    remaining: Tensor | None = None,
) -> WalkResult:
    """Acceptance walk (ALGORITHMS.md §3).

    Args:
        tree: the verified draft tree.
        node_choice: ``[B, N]`` int32/int64, the target's token at every node (greedy argmax or
            an independent sample per node).
        stop_token_ids: tokens that end generation once emitted (``[S]`` tensor or ints).
        remaining: optional ``[B]`` cap on the tokens still to emit this request.

    Returns:
        :class:`WalkResult`. The tokens emitted this round are the path's tokens (nodes
        ``path[:, 1 : accepted + 1]``) followed by ``next_token`` when it is not -1.
    """
    for name, arr in zip(_TREE_FIELDS, tree.arrays()):
        require_tensor(arr, f"tree.{name}")
    require_tensor(node_choice, "node_choice")
    stop = stop_token_ids
    if stop is not None and not isinstance(stop, Tensor):
        stop = torch.tensor(list(stop), dtype=torch.int64, device=tree.device)
    if remaining is not None:
        require_tensor(remaining, "remaining")
    # Read N softly: a malformed tree.token is reported by name by the core's validation.
    N = int(tree.token.shape[1]) if isinstance(tree.token, Tensor) and tree.token.dim() == 2 else 1
    path_len = min(tree.max_depth, max(N - 1, 0)) + 1
    out = _call(
        _tree_walk,
        torch.ops.difftree.tree_walk,
        *tree.arrays(),
        node_choice,
        path_len,
        stop,
        remaining,
    )
    return WalkResult(*out)


# ---- kv_commit -----------------------------------------------------------------------------


@torch.library.custom_op("difftree::kv_commit", mutates_args=("caches",))
def _kv_commit(caches: list[Tensor], base_len: Tensor, path: Tensor, accepted: Tensor) -> None:
    C = ext()
    caps = [dl(c) for c in caches]
    C.kv_commit(caps, dl(base_len), dl(path), dl(accepted), stream_of(path))


@_kv_commit.register_fake
def _(caches: list[Tensor], base_len: Tensor, path: Tensor, accepted: Tensor) -> None:
    return None


def kv_commit(
    caches: Sequence[Tensor], base_len: Tensor | int, path: Tensor, accepted: Tensor
) -> None:
    """Move the accepted nodes' K/V rows into place, every layer in one call (ALGORITHMS.md §4).

    For each request b and ``j = 1..accepted[b]``, row ``base_len[b] + path[b, j]`` moves to
    ``base_len[b] + j`` in every cache. Overlapping rows are safe; an already-contiguous path is a
    no-op. The caller then sets the committed length to ``base_len + accepted + 1``.

    Args:
        caches: contiguous ``[B, H, S, D]`` tensors, all the same shape and dtype (every layer's K
            and V), modified in place.
        base_len: ``[B]`` int32/int64 (or an int) committed length before the round.
        path: ``[B, P]`` int32/int64 from :func:`tree_walk` (``path[:, 0] = 0``).
        accepted: ``[B]`` int32/int64 accepted draft nodes.
    """
    caches = list(caches)
    for i, c in enumerate(caches):
        require_tensor(c, f"caches[{i}]")
    require_tensor(path, "path")
    require_tensor(accepted, "accepted")
    if not isinstance(base_len, Tensor):
        base_len = torch.full(
            (path.shape[0],), int(base_len), dtype=torch.int64, device=path.device
        )
    _call(_kv_commit, torch.ops.difftree.kv_commit, caches, base_len, path, accepted)


# ---- node_select ---------------------------------------------------------------------------


@torch.library.custom_op("difftree::node_select", mutates_args=())
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


@_node_select.register_fake
def _(logits, temperature, top_k, top_p, seed, round_idx):
    return logits.new_empty(logits.shape[:2], dtype=torch.int32)


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
    return _call(_node_select, torch.ops.difftree.node_select, logits, *args)


# ---- caddtree_select / ngram_update / ngram_extend / presto_select (policies) -------------


@torch.library.custom_op("difftree::caddtree_select", mutates_args=())
def _caddtree_select(
    cand_token: Tensor,
    cand_logprob: Tensor,
    max_budget: int,
    root_token: Optional[Tensor],
    verify_cost: Tensor,
    draft_cost: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    C = ext()
    inputs = (
        dl(cand_token),
        dl(cand_logprob),
        max_budget,
        dl_opt(root_token),
        dl(verify_cost),
        dl(draft_cost),
    )
    C.check_caddtree_select(*inputs)
    arrays = _empty_tree(cand_logprob, cand_logprob.shape[0], max_budget + 1)
    workspace = _cuda_workspace(  # the CUDA ddtree_select's scratch
        cand_logprob, lambda: C.ddtree_select_workspace_bytes(*cand_logprob.shape, max_budget)
    )
    C.caddtree_select(
        *inputs, tuple(dl(a) for a in arrays), stream_of(cand_logprob), dl_opt(workspace)
    )
    return arrays


@_caddtree_select.register_fake
def _(cand_token, cand_logprob, max_budget, root_token, verify_cost, draft_cost):
    return _empty_tree(cand_logprob, cand_logprob.shape[0], max_budget + 1)


def caddtree_select_from_candidates(
    cand_token: Tensor,
    cand_logprob: Tensor,
    max_budget: int,
    verify_cost: Tensor,
    draft_cost: Tensor,
    root_token: Tensor | None = None,
) -> DraftTree:
    """CaDDTree (ALGORITHMS.md §5): the DDTree tree at ``max_budget`` cut where the estimated
    throughput ``θ(n) = (1 + Φ(n)) / (C_d + C_v(n))`` stops improving.

    Args:
        cand_token, cand_logprob: ``[B, L, K]`` candidates as for
            :func:`ddtree_select_from_candidates` (CPU or CUDA: on CUDA the costs are trusted,
            not validated, since that would need a host sync).
        max_budget: the largest tree (draft nodes, 1..4096).
        verify_cost: float32 ``[B, max_budget + 1]``: ``C_v(n)``, cost of verifying ``1 + n``
            tokens at each request's context (see ``difftree_rt.policies.CostTable``).
        draft_cost: float32 ``[B]``: ``C_d``.
        root_token: optional ``[B]`` bonus tokens.

    Returns:
        A :class:`DraftTree` of capacity ``max_budget + 1`` with ``num_nodes = 1 + n*``; rows
        past it are padding. Bit-identical to ``difftree_rt.policies.reference``.
    """
    require_tensors(
        cand_token=cand_token,
        cand_logprob=cand_logprob,
        verify_cost=verify_cost,
        draft_cost=draft_cost,
        root_token=root_token,
        optional=("root_token",),
    )
    arrays = _call(
        _caddtree_select,
        torch.ops.difftree.caddtree_select,
        cand_token,
        cand_logprob,
        int(max_budget),
        root_token,
        verify_cost,
        draft_cost,
    )
    return DraftTree.from_arrays(arrays, max_depth=int(cand_logprob.shape[1]))


def ngram_update(keys: Tensor, counts: Tensor, tokens: Tensor, start: int, order: int) -> int:
    """Add the n-grams (lengths ``1..order``) ending at ``tokens[start:]`` to the count table
    ``(keys int64 [H], counts int32 [H])`` in place; ``tokens[:start]`` is history only (CPU).

    Returns the number of newly used slots. Raises ``ValueError`` when the table is full (keep
    its load below 1/2; ``difftree_rt.policies.NGramPrior`` grows it for you).
    """
    require_tensors(keys=keys, counts=counts, tokens=tokens)
    return int(ext().ngram_update(dl(keys), dl(counts), dl(tokens), int(start), int(order)))


@torch.library.custom_op(
    "difftree::ngram_extend", mutates_args=("keys", "counts", "history", "overflow")
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


@_ngram_extend.register_fake
def _(keys, counts, history, tokens, num_tokens, order, overflow):
    return None


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
    _call(
        _ngram_extend, torch.ops.difftree.ngram_extend,
        keys, counts, history, tokens, num_tokens, int(order), overflow,
    )  # fmt: skip


@torch.library.custom_op("difftree::presto_select", mutates_args=())
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
    arrays = _empty_tree(cand_logprob, cand_logprob.shape[0], budget + 1)
    workspace = _cuda_workspace(
        cand_logprob,
        lambda: C.presto_select_workspace_bytes(*cand_logprob.shape, budget, order),
    )
    C.presto_select(
        *inputs, tuple(dl(a) for a in arrays), stream_of(cand_logprob), dl_opt(workspace)
    )
    return arrays


@_presto_select.register_fake
def _(
    cand_token, cand_logprob, budget, root_token, context, keys, counts, order, alpha, lam, vocab
):
    return _empty_tree(cand_logprob, cand_logprob.shape[0], budget + 1)


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
        ``difftree_rt.policies.reference.presto_select_from_candidates``; ``lam=0`` gives the
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
    arrays = _call(
        _presto_select,
        torch.ops.difftree.presto_select,
        cand_token,
        cand_logprob,
        int(budget),
        root_token,
        context,
        keys,
        counts,
        int(order),
        float(alpha),
        float(lam),
        int(vocab),
    )
    return DraftTree.from_arrays(arrays, max_depth=int(cand_logprob.shape[1]))


# ---- taps_select (policies; CPU for now) --------------------------------------------------


@torch.library.custom_op("difftree::taps_select", mutates_args=())
def _taps_select(
    pool_token: Tensor, pool_parent: Tensor, pool_size: Tensor, log_qc: Tensor, budget: int
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    C = ext()
    inputs = (dl(pool_token), dl(pool_parent), dl(pool_size), dl(log_qc), budget)
    C.check_taps_select(*inputs)
    arrays = _empty_tree(log_qc, log_qc.shape[0], budget + 1)
    workspace = _cuda_workspace(  # large pools
        log_qc, lambda: C.taps_select_workspace_bytes(*log_qc.shape, budget)
    )
    C.taps_select(*inputs, tuple(dl(a) for a in arrays), stream_of(log_qc), dl_opt(workspace))
    return arrays


@_taps_select.register_fake
def _(pool_token, pool_parent, pool_size, log_qc, budget):
    return _empty_tree(log_qc, log_qc.shape[0], budget + 1)


def taps_select(
    pool_token: Tensor,
    pool_parent: Tensor,
    pool_size: Tensor,
    log_qc: Tensor,
    budget: int,
    *,
    max_depth: int,
) -> DraftTree:
    """TAPS (ALGORITHMS.md §6): the top-``budget`` pool nodes by reach (cpu/taps.cpp; CUDA
    tensors run cuda/taps_select.cu, bit-identical, the pool trusted rather than validated).

    Args:
        pool_token, pool_parent: ``[B, P1]`` the candidate pool as a tree (row 0 the root,
            ``parent[i] < i``; ``difftree_rt.policies.taps.taps_pool``).
        pool_size: ``[B]`` valid pool rows (root included).
        log_qc: ``[B, P1]`` float32 ``log q_cond(node | parent)`` (<= 0; row 0 ignored).
        budget: draft nodes, 1..4096.
        max_depth: L, the tree's maximum depth.

    Returns:
        A :class:`DraftTree` (capacity ``budget + 1``, score = log reach), bit-identical to
        ``difftree_rt.policies.taps_reference.taps_select``.
    """
    require_tensors(
        pool_token=pool_token, pool_parent=pool_parent, pool_size=pool_size, log_qc=log_qc
    )
    arrays = _call(
        _taps_select,
        torch.ops.difftree.taps_select,
        pool_token,
        pool_parent,
        pool_size,
        log_qc,
        int(budget),
    )
    return DraftTree.from_arrays(arrays, max_depth=int(max_depth))


# ---- d2sd (policies) ----------------------------------------------------------------------


@torch.library.custom_op("difftree::d2sd_boundaries", mutates_args=())
def _d2sd_boundaries(trunk_logprob: Tensor, k: int) -> Tensor:
    C = ext()
    boundary = torch.empty(
        (trunk_logprob.shape[0], k), dtype=torch.int32, device=trunk_logprob.device
    )
    C.check_d2sd_boundaries(dl(trunk_logprob), dl(boundary))
    C.d2sd_boundaries(dl(trunk_logprob), dl(boundary), stream_of(trunk_logprob))
    return boundary


@_d2sd_boundaries.register_fake
def _(trunk_logprob: Tensor, k: int) -> Tensor:
    return trunk_logprob.new_empty((trunk_logprob.shape[0], k), dtype=torch.int32)


def d2sd_boundaries(trunk_logprob: Tensor, k: int = 4) -> Tensor:
    """D²SD's top-``k`` rejection boundaries (ALGORITHMS.md §8; cpu/d2sd.cpp, CUDA tensors run
    cuda/d2sd.cu: the same double arithmetic with CUDA's exp/log, log-probs trusted).

    Args:
        trunk_logprob: float32 ``[B, L]``, ``log c_j``: the first draft's top-1 log-prob at depth
            j + 1 (``topk_logprobs(draft_logits, 1)[1][..., 0]``), finite and <= 0.
        k: boundaries per request, 1..L.

    Returns:
        int32 ``[B, k]``: the numbers of accepted drafts i (0..L-1) with the highest
        ``r(i) = (Π_{j<=i} c_j)(1 - c_{i+1})``, best first, ties to the smaller i; bit-identical
        to ``difftree_rt.policies.d2sd_reference.d2sd_boundaries``.
    """
    require_tensor(trunk_logprob, "trunk_logprob")
    if not isinstance(k, int) or isinstance(k, bool):
        raise ValueError(f"k must be an int, got {k!r}")
    return _call(_d2sd_boundaries, torch.ops.difftree.d2sd_boundaries, trunk_logprob, k)


@torch.library.custom_op("difftree::d2sd_select", mutates_args=())
def _d2sd_select(
    trunk_token: Tensor,
    trunk_logprob: Tensor,
    boundary: Tensor,
    branch_token: Tensor,
    branch_logprob: Tensor,
    budget: int,
    root_token: Optional[Tensor],
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    C = ext()
    inputs = (
        dl(trunk_token),
        dl(trunk_logprob),
        dl(boundary),
        dl(branch_token),
        dl(branch_logprob),
        budget,
        dl_opt(root_token),
    )
    C.check_d2sd_select(*inputs)
    arrays = _empty_tree(trunk_logprob, trunk_logprob.shape[0], budget + 1)
    B, L1 = trunk_logprob.shape
    K, L2 = branch_logprob.shape[1], branch_logprob.shape[2]
    workspace = _cuda_workspace(  # large tries
        trunk_logprob, lambda: C.d2sd_select_workspace_bytes(B, L1, K, L2, budget)
    )
    C.d2sd_select(
        *inputs, tuple(dl(a) for a in arrays), stream_of(trunk_logprob), dl_opt(workspace)
    )
    return arrays


@_d2sd_select.register_fake
def _(trunk_token, trunk_logprob, boundary, branch_token, branch_logprob, budget, root_token):
    return _empty_tree(trunk_logprob, trunk_logprob.shape[0], budget + 1)


def d2sd_select(
    trunk_token: Tensor,
    trunk_logprob: Tensor,
    boundary: Tensor,
    branch_token: Tensor,
    branch_logprob: Tensor,
    budget: int,
    root_token: Tensor | None = None,
) -> DraftTree:
    """D²SD's joint tree: the first draft and its re-drafted branches as one trie (cpu/d2sd.cpp;
    CUDA tensors run cuda/d2sd.cu, bit-identical, the inputs trusted rather than validated).

    Args:
        trunk_token, trunk_logprob: ``[B, L1]`` the first draft (top-1 token and log-prob per
            depth).
        boundary: ``[B, K]`` visible-prefix length of each branch (``d2sd_boundaries``), -1 for
            an unused row.
        branch_token, branch_logprob: ``[B, K, L2]`` the re-drafts: entry j is depth j + 1
            (entries before the branch's boundary are ignored).
        budget: draft nodes, 1..4096.
        root_token: optional ``[B]`` bonus tokens.

    Returns:
        A :class:`DraftTree` (capacity ``budget + 1``, depth up to ``max(L1, L2)``, score = sum
        of edge scores), bit-identical to ``difftree_rt.policies.d2sd_reference.d2sd_select``.
    """
    require_tensors(
        trunk_token=trunk_token,
        trunk_logprob=trunk_logprob,
        boundary=boundary,
        branch_token=branch_token,
        branch_logprob=branch_logprob,
        root_token=root_token,
        optional=("root_token",),
    )
    arrays = _call(
        _d2sd_select,
        torch.ops.difftree.d2sd_select,
        trunk_token,
        trunk_logprob,
        boundary,
        branch_token,
        branch_logprob,
        int(budget),
        root_token,
    )
    depth = max(int(trunk_logprob.shape[-1]), int(branch_logprob.shape[-1]))
    return DraftTree.from_arrays(arrays, max_depth=depth)


# ---- tree_attention ------------------------------------------------------------------------


def _tree_attention_out(q: Tensor) -> Tensor:
    # [B, H_q, N, D] as a transposed view of [B, N, H_q, D]: the layout the model's o_proj wants,
    # so the HF attention path's ``transpose(1, 2).contiguous()`` is free.
    B, H, N, D = q.shape
    return q.new_empty((B, N, H, D)).transpose(1, 2)


@torch.library.custom_op("difftree::tree_attention", mutates_args=())
def _tree_attention(
    q: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
    prefix_len: Tensor,
    tree_anc: Optional[Tensor],
    num_nodes: Optional[Tensor],
    scale: float,
    is_chain: bool,
    num_splits: int,
) -> Tensor:
    C = ext()
    inputs = (
        dl(q),
        dl(k_cache),
        dl(v_cache),
        dl(prefix_len),
        dl_opt(tree_anc),
        dl_opt(num_nodes),
        scale,
        is_chain,
    )
    C.check_tree_attention(*inputs)
    out = _tree_attention_out(q)
    B, H_q, N, D = q.shape
    workspace = _cuda_workspace(  # split-KV
        q,
        lambda: C.tree_attention_workspace_bytes(
            B, H_q, k_cache.shape[1], N, D, k_cache.shape[2], num_splits
        ),
    )
    C.tree_attention(*inputs, num_splits, dl(out), dl_opt(workspace), stream_of(q))
    return out


@_tree_attention.register_fake
def _(q, k_cache, v_cache, prefix_len, tree_anc, num_nodes, scale, is_chain, num_splits):
    return _tree_attention_out(q)


def tree_attention(
    q: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
    prefix_len: Tensor,
    tree_anc: Tensor | None,
    num_nodes: Tensor | None,
    scale: float,
    is_chain: bool = False,
    num_splits: int = 0,
) -> Tensor:
    """Tree-verification attention over a static KV cache (CPU: fp32 oracle; CUDA: fused kernel).

    Query row i of request b sees every committed key ``[0, prefix_len[b])`` and tree key j (cache
    row ``prefix_len[b] + j``) iff j is i or an ancestor of i (bit j of ``tree_anc[b, i]``), or,
    for a chain (``is_chain`` or ``tree_anc=None``), iff ``j <= i``. Rows and keys at or past
    ``num_nodes[b]`` are padding: they see / are seen by only themselves in the tree part. One
    softmax over all visible keys, fp32 accumulation. Same semantics as
    :func:`difftree_rt.models.tree_attention.tree_attention_reference` for well-formed trees.

    Args:
        q: ``[B, H_q, N, D]`` float32/float16/bfloat16 (last dim contiguous; CUDA: f16/bf16,
            D in {64, 128}).
        k_cache, v_cache: ``[B, H_kv, S_max, D]`` in q's dtype, the tree's K/V already written at
            rows ``prefix_len + i``; ``H_q`` a multiple of ``H_kv`` (GQA).
        prefix_len: ``[B]`` int32/int64 committed rows, ``0 <= prefix_len <= S_max - N``.
        tree_anc: ``[B, N, ceil(N/32)]`` int32 ancestor bitmask (uint32 is viewed), or None.
        num_nodes: ``[B]`` int32/int64 valid nodes, or None (all N).
        scale: softmax scale (usually ``D ** -0.5``).
        is_chain: causal inside the tree; ``tree_anc`` is not read.
        num_splits: CUDA split-KV count (0: automatic); ignored on the CPU.

    Returns:
        ``[B, H_q, N, D]`` in q's dtype (a transposed view of a ``[B, N, H_q, D]`` buffer).
    """
    require_tensors(q=q, k_cache=k_cache, v_cache=v_cache, prefix_len=prefix_len)
    if tree_anc is not None:
        require_tensor(tree_anc, "tree_anc")
        if tree_anc.dtype == torch.uint32:
            tree_anc = tree_anc.view(torch.int32)
    if num_nodes is not None:
        require_tensor(num_nodes, "num_nodes")
    return _call(
        _tree_attention,
        torch.ops.difftree.tree_attention,
        q,
        k_cache,
        v_cache,
        prefix_len,
        tree_anc,
        num_nodes,
        float(scale),
        bool(is_chain),
        int(num_splits),
    )


def tree_attention_workspace_bytes(q: Tensor, k_cache: Tensor, num_splits: int = 0) -> int:
    """Bytes of split-KV scratch the CUDA :func:`tree_attention` allocates for these shapes."""
    B, H_q, N, D = q.shape
    return int(
        ext().tree_attention_workspace_bytes(
            B, H_q, k_cache.shape[1], N, D, k_cache.shape[2], int(num_splits)
        )
    )
