"""The decoding round, once: ``[B, ...]`` device state and one step (DESIGN.md §3).

Vocabulary: B batch, T longest prompt, S drafter block size, L = S - 1 draft depth, N tree
capacity (root included), P = path columns (``min(L, N - 1) + 1``), F feature width,
V vocabulary, S_max target cache rows.

A round for request b with committed length ``start_b`` (= target KV rows = drafter context
rows) and bonus token ``bonus_b`` (chosen by the target, no KV row yet):

1. draft: the drafter appends the last path's features (``new_feat``, ``num_new`` rows), then
   runs ``[bonus, MASK x L]`` at positions ``start_b ..`` -> logits ``[B, L, V]`` (redraft
   policies draft a second time from the blocks they ask for);
2. select: the policy builds a tree, root = bonus;
3. verify: the target on the tree at positions ``start_b + depth`` (ancestor-only attention);
4. accept: the sampler picks the target's token at every node (keyed by seed, round, node),
   ``tree_walk`` walks it (stop tokens and the remaining-token cap applied there);
5. commit: ``kv_commit`` moves the accepted rows into place; the path's verify features become
   the next round's pending drafter rows;
6. emit: the accepted tokens and the next bonus are scattered into ``out`` after each request's
   ``generated`` tokens, and the round's status row (accepted, next, done, generated, emitted,
   tree size, tokens) is written for the host.

Everything one round hands to the next lives in :class:`RoundState`, written **in place** (a
captured CUDA graph replays recorded addresses), and the step reads no host value, so the same
step runs eagerly and inside a CUDA graph (``engine/runner.py`` has the two launchers). B = 1 is a
batch of one; "ar" (the target alone) is a one-node tree through the same verify / walk /
commit. A finished request's round is a no-op: it gets a zero cap, so it accepts, emits and
commits nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .. import ops
from ..models.compiled import CompileState, ForwardCompiler
from ..models.dflash import DFlashCache, DFlashDrafter
from ..models.target import TargetAdapter, TargetOutput
from ..policies import DraftPolicy, PolicyInput, PolicyNeeds
from ..tree import DraftTree, anc_words
from .sampling import SamplingSpec, choose

__all__ = ["MAX_STOPS", "STATUS", "HostView", "Round", "RoundConfig", "RoundState", "TargetStep"]

#: Stop-token slots of the static stop buffer (unused slots hold -1, which no token equals).
#: Graph mode runs requests with at most this many stop tokens; eager grows the buffer.
MAX_STOPS = 16


class STATUS:
    """Columns of a round's status row (``RoundState.status``), then the P emitted tokens."""

    ACC, NEXT, DONE, GEN, NEMIT, NODES, EMIT = 0, 1, 2, 3, 4, 5, 6


class TargetStep(DraftPolicy):
    """ "ar", the target alone: no draft, a tree of the root alone (the last token), so a round
    is one target step through the same verify / walk / commit path."""

    name = "ar"
    needs = PolicyNeeds(chain=True, graph_safe=True)

    def __init__(self) -> None:
        super().__init__(1)

    def capacity(self, max_depth: int) -> int:
        return 1

    def select(self, inputs: PolicyInput) -> DraftTree:
        raise AssertionError("'ar' builds its one-node tree in place")


@dataclass(frozen=True)
class RoundConfig:
    """What every round of a decoder shares (host constants).

    Attributes:
        policy: the draft policy (:class:`TargetStep` for "ar").
        drafter: the drafter, None for "ar".
        second: the second drafting pass's drafter of redraft policies (the VP drafter or
            ``drafter``), else ``drafter``.
        capacity: N, the policy's tree rows.
        buckets: tree-size buckets (ascending N, the last = ``capacity``).
        path_cols: P.
        redraft_rows: drafter cache scratch rows the second pass's blocks take.
        device: the target's device.
        compile: the decoder's compilation state (None: uncompiled forwards); graph mode's
            rounds then run compiled target and drafter forwards (``models/compiled.py``).
    """

    policy: DraftPolicy
    drafter: DFlashDrafter | None
    second: DFlashDrafter | None
    capacity: int
    buckets: tuple[int, ...]
    path_cols: int
    redraft_rows: int
    device: torch.device
    compile: CompileState | None = None

    @property
    def block_size(self) -> int:
        return self.drafter.block_size if self.drafter is not None else 1


@dataclass(frozen=True)
class HostView:
    """What the eager launcher knows exactly on the host before a round (graph mode: none).

    Attributes:
        round_idx: the 1-based round counter (policies that are not graph-safe may read it).
        pending_rows: how many of the P pending drafter rows are real for some request
            (``max(num_new)``, >= 1): the rest need not be appended.
        context_cols: ``needs_context`` policies: the columns of ``context`` to hand over.
        context_lengths: ``needs_context`` policies on a batch: each request's committed length.
    """

    round_idx: int
    pending_rows: int
    context_cols: int | None = None
    context_lengths: list[int] | None = None


@dataclass
class RoundState:
    """The per-request values of a round, ``[B]`` int64 unless noted (addresses fixed).

    ``generated`` counts emitted tokens (the prefill's first included); ``done`` is set once a
    stop token was emitted or ``max_new`` reached; ``new_feat`` ``[B, P, F]`` (drafter dtype)
    holds the last path's verify features, ``num_new`` how many of its rows are real.
    """

    bonus: Tensor  # next round's root token
    block: Tensor  # [B, S]: [bonus, MASK x L]
    generated: Tensor
    max_new: Tensor
    done: Tensor  # [B] bool
    round_idx: Tensor  # 1-based round counter per request (keys the draws)
    temperature: Tensor  # [B] float32 sampling parameters (SamplingSpec)
    top_k: Tensor
    top_p: Tensor  # [B] float32
    seed: Tensor
    stop: Tensor  # [MAX_STOPS] (or more, eager), -1 padded
    new_feat: Tensor
    num_new: Tensor
    trees: dict[int, tuple[Tensor, ...]]  # the eight DraftTree arrays per tree-size bucket N
    out: Tensor  # [B, S_max + 1] emitted tokens; the last column is scratch
    status: Tensor  # [B, STATUS.EMIT + P]
    context: Tensor | None  # [B, S_max + 1] token streams (needs_context policies), -1 padded

    def mutable(self) -> list[Tensor]:
        """Buffers a round changes that later rounds read (saved around capture warm-up)."""
        return [self.bonus, self.generated, self.done, self.round_idx, self.new_feat, self.num_new]

    def spec(self) -> SamplingSpec:
        return SamplingSpec(self.temperature, self.top_k, self.top_p, self.seed)


class Round:
    """One batch size's round: its state, drafter caches and policy stream, and the step.

    Args:
        cfg: the decoder's :class:`RoundConfig`.
        adapter: the target adapter it serves (batch size B, S_max rows).
    """

    def __init__(self, cfg: RoundConfig, adapter: TargetAdapter) -> None:
        self.cfg = cfg
        self.adapter = adapter
        # Compiled forwards of this round's shapes (graph mode only: host=None rounds).
        self.compiler = ForwardCompiler(cfg.compile) if cfg.compile is not None else None
        adapter.compiler = self.compiler
        dev, drafter, second = cfg.device, cfg.drafter, cfg.second
        num_b, p, s = adapter.batch_size, cfg.path_cols, cfg.block_size
        i64 = dict(dtype=torch.long, device=dev)
        i32 = dict(dtype=torch.int32, device=dev)
        # Context rows never exceed the target's committed rows (< S_max); + S for the block
        # and the padded append past them; + the second pass's blocks for redraft policies.
        self.span_cap = adapter.max_length + s
        self.dcache: DFlashCache | None = None
        self.vcache: DFlashCache | None = None
        if drafter is not None and second is drafter:
            self.dcache = drafter.new_cache(num_b, self.span_cap + cfg.redraft_rows)
        elif drafter is not None and second is not None:
            self.dcache = drafter.new_cache(num_b, self.span_cap)
            self.vcache = second.new_cache(num_b, self.span_cap + cfg.redraft_rows)
        mask_id = drafter.mask_token_id if drafter is not None else 0
        feat = (drafter.config.feature_size, drafter.dtype) if drafter is not None else (1, None)
        trees = {
            n: (
                torch.zeros(num_b, n, **i32),
                torch.full((num_b, n), -1, **i32),
                torch.zeros(num_b, n, **i32),
                torch.zeros(num_b, n, dtype=torch.float32, device=dev),
                torch.full((num_b, n), -1, **i32),
                torch.full((num_b, n), -1, **i32),
                torch.zeros(num_b, n, anc_words(n), **i32),
                torch.ones(num_b, **i32),
            )
            for n in sorted({1, *cfg.buckets})  # N = 1: the bonus alone (a target step)
        }
        rows = adapter.max_length + 1
        needs = cfg.policy.needs
        self.state = RoundState(
            bonus=torch.zeros(num_b, **i64),
            block=torch.full((num_b, s), mask_id, **i64),
            generated=torch.zeros(num_b, **i64),
            max_new=torch.zeros(num_b, **i64),
            done=torch.zeros(num_b, dtype=torch.bool, device=dev),
            round_idx=torch.zeros(num_b, **i64),
            temperature=torch.zeros(num_b, dtype=torch.float32, device=dev),
            top_k=torch.zeros(num_b, **i64),
            top_p=torch.ones(num_b, dtype=torch.float32, device=dev),
            seed=torch.zeros(num_b, **i64),
            stop=torch.full((MAX_STOPS,), -1, **i64),
            new_feat=torch.zeros(num_b, p, feat[0], dtype=feat[1], device=dev),
            num_new=torch.zeros(num_b, **i64),
            trees=trees,
            out=torch.full((num_b, rows), -1, **i64),
            status=torch.zeros(num_b, STATUS.EMIT + p, **i64),
            context=torch.full((num_b, rows), -1, **i64) if needs.needs_context else None,
        )
        self.cols = torch.arange(p, device=dev)
        # The policy's stream state covers every token the target's cache can commit + the bonus.
        self.stream: Any = None
        if needs.tracks_stream:
            self.stream = cfg.policy.new_stream(num_b, rows, dev)
        self.prompt_lengths = torch.zeros(num_b, **i64)

    @property
    def batch_size(self) -> int:
        return self.adapter.batch_size

    # ------------------------------------------------------------------------------------------
    # Setup (per call; host reads allowed)
    # ------------------------------------------------------------------------------------------
    def setup(
        self,
        prompts: Tensor,
        lengths: list[int],
        features: Tensor | None,
        first: Tensor,
        caps: Tensor,
        sampling: SamplingSpec,
        stop: Tensor | None,
    ) -> None:
        """A call's values into the state, in place: the prompt features into the drafter
        caches, the first token, counters, sampling parameters, stops, the policy's stream and
        context. A request whose first token already ended it starts done.

        Args:
            prompts: ``[B, T]`` right-padded (request b at columns ``0..T_b-1``).
            lengths: the B prompt lengths ``T_b``.
            features: the prompt's target features ``[B, T, F]`` (None for "ar").
            first: ``[B]`` int64 first generated tokens (round 0).
            caps: ``[B]`` int64 ``max_new_tokens``.
            sampling: the call's per-request sampling parameters.
            stop: ``[S]`` int64 stop tokens, or None.
        """
        st, cfg = self.state, self.cfg
        counts = torch.tensor(lengths, dtype=torch.long, device=cfg.device)
        self.prompt_lengths.copy_(counts)
        if cfg.drafter is not None:
            assert features is not None
            for cache in (self.dcache, self.vcache):
                if cache is not None:
                    cache.reset()
            self.append_rows(features, counts)
        if self.stream is not None:
            cfg.policy.start_stream(self.stream, prompts, counts)
            ones = torch.ones_like(counts)
            cfg.policy.extend_stream(self.stream, first[:, None].clamp(min=0), ones)
        if st.context is not None:
            num_t = prompts.shape[1]
            in_prompt = torch.arange(num_t, device=cfg.device)[None, :] < counts[:, None]
            st.context.fill_(-1)
            st.context[:, :num_t] = torch.where(in_prompt, prompts, -1)
            st.context.scatter_(1, counts[:, None], first[:, None])
        st.bonus.copy_(first)
        st.generated.fill_(1)
        st.max_new.copy_(caps)
        st.done.copy_(self.is_stop(first, stop) | (st.max_new <= 1))
        st.round_idx.fill_(1)
        for buf, value in zip(
            (st.temperature, st.top_k, st.top_p, st.seed), sampling.tensors(), strict=True
        ):
            buf.copy_(value)
        n_stop = 0 if stop is None else stop.numel()
        if n_stop > st.stop.numel():  # eager only: graph mode takes at most MAX_STOPS
            st.stop = torch.full((n_stop,), -1, dtype=torch.long, device=cfg.device)
        st.stop.fill_(-1)
        if stop is not None:
            st.stop[:n_stop].copy_(stop)
        st.num_new.zero_()

    @staticmethod
    def is_stop(token: Tensor, stop: Tensor | None) -> Tensor:
        """bool ``[B]``: ``token`` ``[B]`` is a stop token."""
        if stop is None:
            return torch.zeros(token.shape, dtype=torch.bool, device=token.device)
        return torch.isin(token, stop)

    # ------------------------------------------------------------------------------------------
    # The step: no host reads, shapes fixed by host constants (N bucket, key span)
    # ------------------------------------------------------------------------------------------
    def draft(self, span: int, max_nodes: int | None, host: HostView | None = None) -> PolicyInput:
        """Append the pending rows, draft ``[bonus, MASK...]`` over key rows ``[0, span)``,
        run a redraft policy's second pass; returns the policy's input.

        Args:
            span: drafter key rows (``>= max(start) + S``).
            max_nodes: the round's tree-size bucket minus the root (None: full capacity).
            host: what the eager launcher knows exactly on the host (exact shapes, the round
                counter, the context of ``needs_context`` policies); None in graph mode, whose
                trees keep the bucket's full shape (``PolicyInput.fixed_shape``).
        """
        st, cfg, dc = self.state, self.cfg, self.dcache
        drafter, policy = cfg.drafter, cfg.policy
        assert drafter is not None and dc is not None
        self.append_pending(host)
        vc = self.vcache
        st.block[:, 0].copy_(st.bonus)
        if self.compiler is not None and host is None:
            logits = self.compiler.call(("draft", span), drafter.draft, st.block, dc, span)
        else:
            logits = drafter.draft(st.block, dc, span)
        context = None
        if st.context is not None and host is not None and host.context_cols is not None:
            context = st.context[:, : host.context_cols]
        inputs = PolicyInput(
            logits, st.bonus, host.round_idx if host is not None else 0, context,
            committed=self.adapter.cache.base_len, fixed_shape=host is None, stream=self.stream,
            max_nodes=max_nodes, context_lengths=host.context_lengths if host else None,
        )  # fmt: skip
        if policy.needs.redraft:
            # The second pass (d2sd): R blocks over the same context, at scratch rows past the
            # key span; its cache holds exactly the same context rows as the first one.
            second = cfg.second
            assert second is not None
            blocks = policy.redraft_blocks(inputs, second.block_size, second.mask_token_id)
            cache = dc if vc is None else vc
            if self.compiler is not None and host is None:
                key = ("branches", tuple(blocks.shape), span)
                inputs.branch_logits = self.compiler.call(
                    key, self._draft_branches, second, blocks, cache, span
                )
            else:
                inputs.branch_logits = second.draft_branches(blocks, cache, span=span)
        return inputs

    def append_pending(self, host: HostView | None = None) -> None:
        """Append the last round's accepted rows (their target features) to the drafter caches,
        so the drafter's context is exactly the committed tokens before the bonus. Every draft
        starts with it; a round that does not draft (``policy="auto"``) calls it alone, so the
        drafter keeps up while the target runs by itself."""
        st = self.state
        if self.cfg.drafter is None:
            return
        # The eager launcher appends only as many of the P rows as the last round accepted.
        feats = st.new_feat if host is None else st.new_feat[:, : host.pending_rows]
        self.append_rows(feats, st.num_new, compiled=host is None)
        st.num_new.zero_()

    def append_rows(self, feats: Tensor, counts: Tensor, compiled: bool = False) -> None:
        """Append committed rows' target features ``[B, n, F]`` (``counts [B]`` of them real)
        to every drafter cache (the drafter's and a second drafter's); ``compiled``: graph
        mode's fixed ``n`` (compiled once when the decoder compiles)."""
        cfg = self.cfg
        for i, (drafter, cache) in enumerate(
            ((cfg.drafter, self.dcache), (cfg.second, self.vcache))
        ):
            if drafter is None or cache is None:
                continue
            rows = feats.to(drafter.dtype)
            if compiled and self.compiler is not None:
                key = ("append", i, feats.shape[1])
                self.compiler.call(key, drafter.append_context, cache, rows, counts)
            else:
                drafter.append_context(cache, rows, counts)

    @staticmethod
    def _draft_branches(
        second: DFlashDrafter, blocks: Tensor, cache: DFlashCache, span: int
    ) -> Tensor:
        return second.draft_branches(blocks, cache, span=span)

    def root_tree(self) -> DraftTree:
        """ "ar": the one-node tree holding the last token (in the N = 1 buffers)."""
        arrays = self.state.trees[1]
        arrays[0][:, 0].copy_(self.state.bonus)
        return DraftTree.from_arrays(arrays, max_depth=0)

    def select(self, inputs: PolicyInput) -> DraftTree:
        return self.cfg.policy.select(inputs)

    def store_tree(self, tree: DraftTree, nb: int) -> DraftTree:
        """Copy ``tree`` into bucket ``nb``'s static tree buffers (graph mode's seam between its
        two graphs); returns the buffered tree."""
        arrays = self.state.trees[nb]
        for buf, arr in zip(arrays, tree.arrays(), strict=True):
            buf.copy_(arr)
        return self.buffered_tree(nb)

    def buffered_tree(self, nb: int) -> DraftTree:
        return DraftTree.from_arrays(self.state.trees[nb], max_depth=self.cfg.path_cols - 1)

    def verify(self, tree: DraftTree) -> TargetOutput:
        """The target's verify pass (chains need no ancestor mask). Padding rows hold token -1:
        0 keeps the embedding lookup in range (never visible, never accepted)."""
        tokens = tree.token.clamp(min=0)
        # This round's compiled forwards (an adapter given to several decoders serves each
        # decoder's rounds with that decoder's setting).
        self.adapter.compiler = self.compiler
        if self.cfg.policy.needs.chain or tree.token.shape[1] == 1:
            return self.adapter.verify(tokens, tree.depth, None, None)
        return self.adapter.verify(tokens, tree.depth, tree.anc, tree.num_nodes)

    def accept(self, tree: DraftTree, verified: TargetOutput) -> ops.WalkResult:
        """The target's token at every node, then the walk; a finished request gets a zero
        cap, so it accepts and emits nothing."""
        st = self.state
        choice = choose(verified.logits, st.spec(), st.round_idx)
        remaining = (st.max_new - st.generated) * ~st.done
        return ops.tree_walk(tree, choice, st.stop, remaining)

    def commit(self, tree: DraftTree, verified: TargetOutput, walk: ops.WalkResult) -> None:
        """Commit the accepted path, keep its features for the next draft, emit its tokens and
        write the status row; every state buffer is updated in place."""
        st, cfg = self.state, self.cfg
        active = ~st.done
        path = walk.path
        if path.shape[1] < cfg.path_cols:  # an eager tree shallower than the capacity allows
            path = torch.nn.functional.pad(path, (0, cfg.path_cols - path.shape[1]), value=-1)
        # A tree smaller than the path width (auto's small buckets) has at most N path columns.
        self.adapter.commit(path[:, : tree.token.shape[1]].contiguous(), walk.accepted, active)
        accepted = walk.accepted.to(torch.long)
        next_token = walk.next_token.to(torch.long)
        if cfg.drafter is not None:
            assert verified.features is not None
            st.new_feat.copy_(self.adapter.gather_path(verified.features, path))
            st.num_new.copy_((accepted + 1) * active)
        # Emitted: the path's draft tokens then the next bonus (when any); invalid entries go
        # to the scratch column, so the writes need no host-side length.
        cols = self.cols
        path_nodes = path[:, 1:].clamp(min=0).to(torch.long)
        emit = torch.gather(tree.token, 1, path_nodes).to(torch.long)
        emit = torch.cat([emit, next_token[:, None]], dim=1)[:, : cols.numel()]
        emit = torch.where(cols[None] == accepted[:, None], next_token[:, None], emit)
        # A finished request walked with a zero cap: nothing accepted, no next token.
        num_emit = accepted + (next_token >= 0).to(torch.long)
        keep = cols[None] < num_emit[:, None]
        trash = st.out.shape[1] - 1
        dest = torch.where(keep, st.generated[:, None] + cols[None], trash)
        st.out.scatter_(1, dest, emit)
        if st.context is not None:
            sdest = torch.where(keep, dest + self.prompt_lengths[:, None], trash)
            st.context.scatter_(1, sdest, emit)
        if self.stream is not None:
            cfg.policy.extend_stream(self.stream, emit, num_emit)
        st.generated.add_(num_emit)
        st.done.logical_or_(walk.done)  # a stop token emitted or the cap reached
        st.bonus.copy_(torch.where(next_token >= 0, next_token, st.bonus))
        st.round_idx.add_(1)
        head = (accepted, next_token, st.done.to(torch.long), st.generated, num_emit,
                tree.num_nodes.to(torch.long))  # fmt: skip
        st.status.copy_(torch.cat([torch.stack(head, dim=1), torch.where(keep, emit, -1)], dim=1))
