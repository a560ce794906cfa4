"""Batched generation (B > 1) for :class:`~difftree_rt.engine.SpeculativeDecoder`: the eager
path here; graph mode (``cuda_graphs``) runs the same rounds in ``engine/graph.py``.

Vocabulary: B batch, T longest prompt, N tree capacity, P path columns, V vocabulary.

Prompts come left-padded (HF style) or as a list; each request is prefilled at its own positions
0..T_b-1 and runs its own rounds in lock step with the others: request b's round r is exactly its
solo round r (same tree, same keyed draws with its derived seed), so every request's output
equals its solo run token for token. Finished requests ride along as no-ops (``remaining = 0``,
commit gated by ``active``) until the whole batch ends. docs/NOTES.md "Batched generation".
"""

from __future__ import annotations

import time

import torch
from torch import Tensor

from ..models.dflash import DFlashCache, DFlashDrafter
from ..models.target import TargetAdapter
from ..policies import PolicyInput
from .output import CACHE_ROUND, GenerationOutput
from .request import CallStreamer, GenerateRequest
from .round_ops import emitted_tokens, start_stream, verify_tree, write_emitted
from .sampling import RequestSettings, SamplingParams, choose_tokens, sampling_kwargs
from .stats import GenerationStats, PhaseTimer

__all__ = ["BatchGenerationMixin"]


class BatchGenerationMixin:
    """The B > 1 methods of :class:`SpeculativeDecoder` (kept apart from the solo path); they
    use the decoder's attributes and its shared helpers (``_make_adapter``, ``_is_stop``,
    ``_ended_on_stop``)."""

    def _batch_adapter_for(self, needed: int, batch_size: int) -> TargetAdapter:
        """The decoder-owned adapter of a batch (B > 1), kept for the next call of that B."""
        ad = self._batch_adapter
        if self.max_length is not None:
            if needed > self.max_length:
                raise ValueError(
                    f"max_length={self.max_length} is too small for this request: "
                    f"prompt + max_new_tokens + one tree of N={self.capacity} rows needs {needed}"
                )
            if ad is None or ad.batch_size != batch_size:
                ad = self._make_adapter(self.max_length, batch_size)
        elif ad is None or ad.batch_size != batch_size or ad.max_length < needed:
            ad = self._make_adapter(-(-needed // CACHE_ROUND) * CACHE_ROUND, batch_size)
        self._batch_adapter = ad
        return ad

    def _generate_batch(self, request: GenerateRequest) -> GenerationOutput:
        """B > 1 requests, left-padded ``request.ids [B, T]`` with real lengths
        ``request.lengths``; its streamer gets ``(b, new tokens)`` after the first token and
        after every round.

        Every request keeps its own committed length (target ``base_len``, drafter cache
        ``lengths``) and round counter; all active requests run one round per batched round,
        so request b's round r is the global round r, exactly as alone. A finished request
        rides along as a no-op (commit, drafter append and output writes gated by ``active``)
        until the whole batch is done.
        """
        ids, lengths, max_new, pad = request.ids, request.lengths, request.max_new, request.pad
        params, req, stop = request.params, request.settings, request.stop
        streamer = request.streamer
        policy = self.policy
        if policy is not None and policy.needs.needs_context and not policy.needs.batch_context:
            raise NotImplementedError(
                f"policy {self.policy_name!r} reads each request's token stream "
                "(needs_context) and runs one request at a time: batched generation (B > 1) is "
                "not supported for it; call generate per request (input_ids [1, T])"
            )
        num_b, num_t = ids.shape
        adapter = self._adapter_for(num_t + max_new + self.capacity, num_b)
        adapter.reset()
        stats = GenerationStats(
            policy=self.policy_name,
            budget=self.budget,
            prompt_len=sum(lengths),
            batch_size=num_b,
        )
        per = [
            GenerationStats(policy=self.policy_name, budget=self.budget, prompt_len=n)
            for n in lengths
        ]
        timer = PhaseTimer(stats, self.device, self.profile)
        t_start = time.perf_counter()
        # Left -> right padding: request b's tokens at columns 0..T_b-1, so its positions start
        # at 0 exactly as alone (the padding columns are computed, never committed).
        dev = self.device
        lens_t = torch.tensor(lengths, dtype=torch.long, device=dev)
        cols = torch.arange(num_t, device=dev)[None, :]
        src = (cols + (num_t - lens_t)[:, None]).clamp(max=num_t - 1)
        right = torch.where(cols < lens_t[:, None], torch.gather(ids, 1, src), 0)
        done = None
        if self.cuda_graphs:
            done = self._runner().generate_batch(
                adapter, right, lengths, request, per, stats, timer
            )
        if done is None and policy is None:
            done = self._generate_ar_batch(
                adapter, right, lengths, max_new, params, req, stop, per, timer, streamer
            )
        elif done is None:
            done = self._generate_spec_batch(
                adapter, right, lengths, max_new, params, req, stop, per, timer, streamer
            )
        out_buf, gen = done
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        stats.total_time = time.perf_counter() - t_start
        # Outputs: row b's generated tokens, then pad_token_id up to the longest request.
        new_len = max(gen)
        gen_t = torch.tensor(gen, dtype=torch.long, device=dev)
        new = out_buf[:, :new_len]
        new = torch.where(torch.arange(new_len, device=dev)[None, :] < gen_t[:, None], new, pad)
        for b, s in enumerate(per):
            s.new_tokens = gen[b]
            s.stopped = self._ended_on_stop(out_buf[b : b + 1, : gen[b]], stop)
            s.phase_time = dict(stats.phase_time)
            s.total_time = stats.total_time
            stats.accepted_lengths += s.accepted_lengths
            stats.emitted_per_round += s.emitted_per_round
        stats.new_tokens = sum(gen)
        stats.stopped = all(s.stopped for s in per)
        stats.batch_rounds = max(s.rounds for s in per)
        return GenerationOutput(
            sequences=torch.cat([ids, new], dim=1),
            stats=stats,
            prompt_lengths=lens_t.cpu(),
            new_lengths=gen_t.cpu(),
            request_stats=per,
        )

    def _prefill_batch(
        self,
        adapter: TargetAdapter,
        right: Tensor,
        lengths: list[int],
        params: SamplingParams,
        req: RequestSettings,
        stop: Tensor | None,
        out_buf: Tensor,
        timer: PhaseTimer,
    ) -> tuple[Tensor, Tensor | None, Tensor]:
        """Prefill a right-padded batch (request b at positions 0..T_b-1) and choose every
        request's first token (round 0, node 0, its own seed)."""
        with timer.phase("prefill"):
            out = adapter.prefill(right, last_logits_only=True, lengths=lengths)
            first = choose_tokens(out.logits, params, 0, **sampling_kwargs(req))[:, 0]
            out_buf[:, 0] = first
        return first, out.features, self._is_stop(first, stop)

    def _generate_ar_batch(
        self,
        adapter: TargetAdapter,
        right: Tensor,
        lengths: list[int],
        max_new: int,
        params: SamplingParams,
        req: RequestSettings,
        stop: Tensor | None,
        per: list[GenerationStats],
        timer: PhaseTimer,
        streamer: CallStreamer,
    ) -> tuple[Tensor, list[int]]:
        """ "ar" on a batch: one target step per round for every request; a finished request's
        step is computed (its own cache rows only) but neither emitted nor counted."""
        num_b = right.shape[0]
        out_buf = torch.full((num_b, max_new + 1), -1, dtype=torch.long, device=self.device)
        trash = max_new
        token, _, is_stop = self._prefill_batch(
            adapter, right, lengths, params, req, stop, out_buf, timer
        )
        generated_t = torch.ones(num_b, dtype=torch.long, device=self.device)
        caps_t = req.max_new if req.max_new is not None else max_new
        active_t = ~is_stop & (generated_t < caps_t)
        with timer.phase("host"):
            act = [bool(a) for a in active_t.tolist()]
            streamer.rows(out_buf, [0] * num_b, [1] * num_b)
        gen = [1] * num_b
        step = 0
        while any(act):
            step += 1
            with timer.phase("verify"):
                logits = adapter.decode(token.clamp(min=0)[:, None]).logits
            with timer.phase("accept"):
                token = choose_tokens(logits, params, step, **sampling_kwargs(req))[:, 0]
                dest = torch.where(active_t, generated_t, trash)
                out_buf.scatter_(1, dest[:, None], token[:, None])
                generated_t = generated_t + active_t.to(torch.long)
                active_t = active_t & ~self._is_stop(token, stop) & (generated_t < caps_t)
            with timer.phase("host"):
                before = gen
                flags, gen = torch.stack([active_t.to(torch.long), generated_t]).tolist()
                streamer.rows(out_buf, before, gen)
                for b in range(num_b):
                    if act[b]:
                        per[b].accepted_lengths.append(0)
                        per[b].emitted_per_round.append(1)
                act = [bool(a) for a in flags]
        return out_buf, gen

    def _batch_drafter_cache(self, drafter: DFlashDrafter, num_b: int, rows: int) -> DFlashCache:
        cache = self._batch_dcache
        if cache is None or cache.batch_size != num_b or cache.dtype != drafter.dtype:
            cache = drafter.new_cache(batch_size=num_b, capacity=rows)
            self._batch_dcache = cache
        cache.reset()
        cache.reserve(rows)
        return cache

    def _generate_spec_batch(
        self,
        adapter: TargetAdapter,
        right: Tensor,
        lengths: list[int],
        max_new: int,
        params: SamplingParams,
        req: RequestSettings,
        stop: Tensor | None,
        per: list[GenerationStats],
        timer: PhaseTimer,
        streamer: CallStreamer,
    ) -> tuple[Tensor, list[int]]:
        """Speculative rounds on a batch: :meth:`_generate_spec` with per-request committed
        lengths (the drafter cache is ragged: ``num_new = accepted + 1`` rows per request) and
        an ``active`` mask that turns a finished request's round into a no-op."""
        from .. import ops

        drafter, policy = self.drafter, self.policy
        assert drafter is not None and policy is not None
        num_b, num_t = right.shape
        dev = self.device
        dcache = self._batch_drafter_cache(drafter, num_b, num_t + max_new + drafter.block_size)
        second, vcache = drafter, dcache
        if policy.needs.redraft and self.vp_drafter is not None:
            second = self.vp_drafter
            vcache = second.new_cache(batch_size=num_b, capacity=num_t + max_new + 1)
        out_buf = torch.full((num_b, max_new + 1), -1, dtype=torch.long, device=dev)
        trash = max_new
        cols = torch.arange(self.path_cols, device=dev)

        bonus, features, is_stop = self._prefill_batch(
            adapter, right, lengths, params, req, stop, out_buf, timer
        )
        assert features is not None
        # The prompt rows (padding past T_b is written to scratch, not counted).
        new_features = features.to(drafter.dtype)
        num_new = torch.tensor(lengths, dtype=torch.long, device=dev)
        stream = None
        if policy.needs.needs_context:
            # Request b's token stream (prompt, then its generated tokens ending with the bonus)
            # from column 0, -1 after it; the last column is scratch. Extended on the device as
            # tokens are emitted; the policy reads [:, :T + max(generated)].
            prompt_t = num_new.clone()
            stream = torch.full((num_b, num_t + max_new + 1), -1, dtype=torch.long, device=dev)
            in_prompt = torch.arange(num_t, device=dev)[None, :] < prompt_t[:, None]
            stream[:, :num_t] = torch.where(in_prompt, right, -1)
            stream.scatter_(1, prompt_t[:, None], bonus[:, None].to(torch.long))
            stream_trash = num_t + max_new
        pstream = None
        if policy.needs.tracks_stream:
            pstream = policy.new_stream(num_b, num_t + max_new + 1, dev)
            start_stream(policy, pstream, right, num_new, bonus)
        generated_t = torch.ones(num_b, dtype=torch.long, device=dev)
        caps_t = req.max_new if req.max_new is not None else max_new
        active_t = ~is_stop & (generated_t < caps_t)
        with timer.phase("host"):
            act = [bool(a) for a in active_t.tolist()]
            streamer.rows(out_buf, [0] * num_b, [1] * num_b)
        gen = [1] * num_b
        starts = list(lengths)  # committed rows per request
        round_idx = 0
        while any(act):
            round_idx += 1
            with timer.phase("draft"):
                block = drafter.make_block(bonus)
                # Ragged context: request b's block sits at its own length (start = lengths).
                draft_logits = drafter.draft(block, dcache, new_features, num_new=num_new)
                inputs = PolicyInput(
                    draft_logits, bonus, round_idx, stream=pstream, committed=adapter.cache.base_len
                )
                if stream is not None:
                    inputs.context_lengths = list(starts)
                    inputs.context_ids = stream[:, : num_t + max(gen)]
                if policy.needs.redraft:
                    if vcache is not dcache:
                        second.append_context(vcache, new_features.to(second.dtype), num_new)
                    blocks = policy.redraft_blocks(inputs, second.block_size, second.mask_token_id)
                    inputs.branch_logits = second.draft_branches(blocks, vcache)
            with timer.phase("select"):
                tree = policy.select(inputs)
            with timer.phase("verify"):
                verified = verify_tree(adapter, tree, policy.needs.chain)
            with timer.phase("accept"):
                choice = choose_tokens(verified.logits, params, round_idx, **sampling_kwargs(req))
                # Finished requests: nothing left to emit (their walk is discarded anyway).
                remaining = (caps_t - generated_t) * active_t.to(torch.long)
                walk = ops.tree_walk(tree, choice, stop, remaining)
            with timer.phase("commit"):
                adapter.commit(walk.path, walk.accepted, active_t)
                assert verified.features is not None
                path_features = adapter.gather_path(verified.features, walk.path)
                act_l = active_t.to(torch.long)
                accepted = walk.accepted.to(torch.long) * act_l
                next_token = torch.where(active_t, walk.next_token.to(torch.long), -1)
                emit, num_emit = emitted_tokens(tree, walk.path, accepted, next_token, cols)
                num_emit = num_emit * act_l
                _, dest = write_emitted(out_buf, generated_t, emit, num_emit, cols, trash)
                if stream is not None:
                    sdest = torch.where(dest == trash, stream_trash, dest + prompt_t[:, None])
                    stream.scatter_(1, sdest, emit)
                generated_t = generated_t + num_emit
                if pstream is not None:
                    policy.extend_stream(pstream, emit, num_emit)
                num_new = (accepted + 1) * act_l
                active_t = active_t & ~walk.done & (next_token >= 0) & (generated_t < caps_t)
            with timer.phase("host"):
                before = gen
                acc, nxt, flags, gen = torch.stack(
                    [accepted, next_token, active_t.to(torch.long), generated_t]
                ).tolist()
                streamer.rows(out_buf, before, gen)
                adapter.cache.sync_len_bound()
                rows = 1
                for b in range(num_b):
                    if act[b]:
                        per[b].accepted_lengths.append(acc[b])
                        per[b].emitted_per_round.append(acc[b] + (1 if nxt[b] >= 0 else 0))
                        starts[b] += acc[b] + 1
                        rows = max(rows, acc[b] + 1)
                new_features = path_features[:, :rows].to(drafter.dtype)
                bonus = next_token.clamp(min=0)
                act = [bool(a) for a in flags]
        return out_buf, gen
