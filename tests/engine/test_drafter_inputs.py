"""The drafter sees exactly the committed context on every round, in every round loop.

Lossless tests cannot see the draft side: a drafter fed a wrong context (a key span that stops
short of the context, a stale or missing row) only drafts worse, and the target still emits HF
greedy's tokens. So a spy records every draft call (``DFlashDrafter.draft``) of the eager
solo and batch loops and of graph mode (run uncaptured on CPU): the block, each request's
context length, the key span and the logits. Each active request's draft is then
recomputed from scratch: the drafter's stateless forward on the target features of exactly
that request's committed rows ``[0, start)``, the block at positions ``start .. start + S - 1``.

Checked per round and request: the context advances by accepted + 1; the block is
``[bonus, MASK...]`` with the bonus the first uncommitted token; the key span (eager: exact;
graph mode: bucketed) covers the context and the block (``span >= start + S``); the logits
equal the recompute up to fp32 error (tests/tolerance.py: exact = the fp64 recompute, the
framework's own error = the fp32 recompute's, maxima over the run; a missing context row moves
them by ~1). Small span buckets (``span_min`` 8) make every run cross several bucket
boundaries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
import torch
from draft_reference import scratch_ref
from engine_helpers import trained_pair
from tests.tolerance import Ref

from difftree_rt import SpeculativeDecoder
from difftree_rt.models import DFlashDrafter

SPAN_MIN = 8  # rows: spans 16, 32, 64, 128 within one request of ~70 rows
NEW = 48
SEEDS = (0, 1, 2, 3)


@dataclass
class DraftCall:
    """One draft call: ``block [B, S]``, ``starts [B]`` context rows per request, key ``span``
    (None: the whole cache capacity), ``logits [B, L, V]``."""

    block: torch.Tensor
    starts: list[int]
    span: int | None
    logits: torch.Tensor


def spy_drafts(drafter: DFlashDrafter, monkeypatch: pytest.MonkeyPatch) -> list[DraftCall]:
    """Record every draft call of ``drafter`` (``DFlashDrafter.draft``, eager and graph mode)."""
    calls: list[DraftCall] = []
    real_draft = drafter.draft

    def draft(block_ids: torch.Tensor, cache: Any, span: int | None = None) -> torch.Tensor:
        # After the round's append, every request's context is rows [0, lengths[b]).
        starts = cache.lengths.tolist()
        logits = real_draft(block_ids, cache, span)
        calls.append(DraftCall(block_ids.clone(), starts, span, logits.clone()))
        return logits

    monkeypatch.setattr(drafter, "draft", draft)
    return calls


def check_drafts(
    calls: list[DraftCall],
    seqs: list[torch.Tensor],
    prompt_lens: list[int],
    accepted: list[list[int]],
) -> list[int]:
    """Check every active request's draft of every round (module docstring); returns the key
    spans of the graph-mode rounds.

    Args:
        calls: the spy's records, one per round (a batch call covers all B requests).
        seqs: B full sequences (prompt + generated tokens) ``[T_b + new_b]``.
        prompt_lens: B prompt lengths ``T_b``.
        accepted: B lists of accepted lengths per round (request b runs that many rounds).
    """
    target, drafter = trained_pair()
    rounds = max(len(a) for a in accepted)
    # Graph mode launches one (no-op) round past the end; eager loops none.
    assert rounds <= len(calls) <= rounds + 1, (len(calls), rounds)
    s_len = drafter.block_size
    got: list[torch.Tensor] = []
    refs: list[Ref] = []
    spans: list[int] = []
    for b, (seq, acc) in enumerate(zip(seqs, accepted, strict=True)):
        start = prompt_lens[b]
        for r, a in enumerate(acc):
            call = calls[r]
            assert call.starts[b] == start, (b, r, call.starts[b], start)
            if call.span is not None:
                assert call.span >= max(call.starts) + s_len, (r, call.span, call.starts)
                spans.append(call.span)
            block = call.block[b : b + 1]
            assert int(block[0, 0]) == int(seq[start]), (b, r)
            assert bool((block[0, 1:] == drafter.mask_token_id).all())
            got.append(call.logits[b : b + 1])
            refs.append(scratch_ref(target, drafter, seq, start, block))
            start += a + 1
    Ref.cat(refs).check(torch.cat(got), what="draft logits")
    return spans


def _decoder(policy: str, graph: bool) -> SpeculativeDecoder:
    target, drafter = trained_pair()
    dec = SpeculativeDecoder(target, drafter, policy, budget=16, cuda_graphs=graph)
    if graph:
        dec._runner().span_min = SPAN_MIN
    return dec


def _prompts(seed: int, lens: tuple[int, ...]) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 32, (n,), generator=gen) for n in lens]


@pytest.mark.parametrize("graph", [False, True], ids=["eager", "graph"])
@pytest.mark.parametrize("policy", ["chain", "ddtree", "d2sd"])
def test_solo_drafts_equal_scratch_recompute(
    policy: str, graph: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    dec = _decoder(policy, graph)
    spans: list[int] = []
    for seed in SEEDS[:2]:
        (prompt,) = _prompts(seed, (5,))
        calls = spy_drafts(dec.drafter, monkeypatch)
        out = dec.generate(prompt[None], NEW)
        monkeypatch.undo()
        acc = out.stats.accepted_lengths
        spans += check_drafts(calls, [out.sequences[0]], [prompt.numel()], [acc])
    if graph:
        assert len(set(spans)) >= 3, spans  # crossed at least two span-bucket boundaries


@pytest.mark.parametrize("graph", [False, True], ids=["eager", "graph"])
def test_batch_drafts_equal_scratch_recompute(graph: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    dec = _decoder("ddtree", graph)
    prompts = _prompts(7, (3, 11, 6))
    calls = spy_drafts(dec.drafter, monkeypatch)
    out = dec.generate(prompts, NEW)
    monkeypatch.undo()
    t = out.sequences.shape[1] - int(out.new_lengths.max())
    seqs = [
        torch.cat([p, out.sequences[b, t : t + int(out.new_lengths[b])]])
        for b, p in enumerate(prompts)
    ]
    acc = [s.accepted_lengths for s in out.request_stats]
    spans = check_drafts(calls, seqs, [p.numel() for p in prompts], acc)
    if graph:
        assert len(set(spans)) >= 3, spans


@pytest.mark.parametrize("policy", ["chain", "ddtree"])
def test_graph_accepted_lengths_equal_eager_across_span_buckets(policy: str) -> None:
    # A drafter that sees fewer or more rows than the eager loop's exact context drafts
    # differently; the accepted lengths (not the tokens) show it.
    eager, graph = _decoder(policy, False), _decoder(policy, True)
    spans: list[int] = []
    run_round = graph._runner()._run_round

    def spy(span: int, nb: int, timer: Any) -> None:
        spans.append(span)
        run_round(span, nb, timer)

    graph._runner()._run_round = spy  # type: ignore[method-assign]
    for seed in SEEDS:
        (prompt,) = _prompts(100 + seed, (5,))
        got = graph.generate(prompt[None], NEW)
        want = eager.generate(prompt[None], NEW)
        assert torch.equal(got.sequences, want.sequences)
        assert got.stats.accepted_lengths == want.stats.accepted_lengths, seed
    assert {16, 32, 64} <= set(spans), sorted(set(spans))
