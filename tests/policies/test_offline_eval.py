"""Offline evaluation: trace recording through generate, exact greedy τ on recorded rounds
(equal to the live run for the recorded policy), coverage, the sampling estimate, the CLI."""

from __future__ import annotations

import json

import torch
from engine_helpers import greedy_reference, trained_pair
from test_greedy import assert_greedy_equal

from difftree_rt.cli import main
from difftree_rt.eval import Trace, TraceRecorder, evaluate
from difftree_rt.eval.offline import _score_round, _Selector
from difftree_rt.policies import default_cost_table


def _record(budget: int = 64) -> Trace:
    target, drafter = trained_pair()
    rec = TraceRecorder(target, drafter, budget=budget, max_length=256)
    gen = torch.Generator().manual_seed(9)
    for n in (4, 11):
        prompt = torch.randint(0, 32, (1, n), generator=gen)
        out = rec.generate(prompt, 40)
        assert_greedy_equal(target, out.sequences, greedy_reference(target, prompt, 40))
    return rec.trace


def test_trace_replays_the_live_run_exactly(tmp_path) -> None:  # type: ignore[no-untyped-def]
    trace = _record(64)
    path = tmp_path / "trace.pt"
    trace.save(path)
    trace = Trace.load(path)
    assert len(trace.sequences) == 2 and len(trace.rounds) >= 4
    r0 = trace.rounds[0]
    assert r0.cand_token.shape == r0.cand_logprob.shape and r0.cand_token.shape[1] == 32
    assert r0.topk_prob.shape == (len(r0.token), 8)
    # DDTree at the record budget rebuilt from the candidates is the verified tree, and its
    # greedy walk on the recorded choices is the live run's accepted length, round by round
    # (the last round of a sequence may have been cut by max_new_tokens).
    sel = _Selector("ddtree", 64, default_cost_table(), {})
    last = {r.seq: i for i, r in enumerate(trace.rounds)}
    for i, r in enumerate(trace.rounds):
        stream = trace.sequences[r.seq][: r.ctx_len + 1]
        assert stream[-1] == int(r.token[0])  # the stream ends with the root (bonus) token
        tree = sel.tree(r, stream, 32)
        assert torch.equal(tree.token[0, : len(r.token)], r.token)
        acc, covered, mass, hits, n = _score_round(tree, r)
        assert covered and hits == n
        if i != last[r.seq]:
            assert acc == r.accepted
        assert 0.0 <= mass <= n


def test_evaluate_table_and_cli(tmp_path) -> None:  # type: ignore[no-untyped-def]
    trace = _record(64)
    rows = {(r.policy, r.budget): r for r in evaluate(trace, budgets=(4, 16, 64))}
    for b in (4, 16, 64):
        assert rows[("ddtree", b)].round_coverage == 1.0
        assert rows[("caddtree", b)].node_coverage == 1.0
        # More nodes never hurt DDTree's τ (its trees are nested).
        assert rows[("ddtree", b)].tau_greedy >= rows[("chain", 4)].tau_greedy - 1e-9 or b < 4
        assert rows[("caddtree", b)].mean_nodes <= b
        assert 1.0 <= rows[("ddtree", b)].tau_sampling <= 1.0 + 31
    assert rows[("ddtree", 64)].tau_greedy >= rows[("ddtree", 4)].tau_greedy
    assert rows[("ddtree", 64)].tau_sampling >= rows[("ddtree", 16)].tau_sampling
    path = tmp_path / "trace.pt"
    trace.save(path)
    out = tmp_path / "table.json"
    assert main(["eval-policies", str(path), "--budgets", "4", "16", "--out", str(out)]) == 0
    payload = json.loads(out.read_text())
    assert len(payload["rows"]) == 10 and payload["trace_meta"]["record_budget"] == 64


def test_taps_with_marginal_scorer_scores_like_ddtree() -> None:
    """TAPS with q_cond = the draft marginals selects DDTree's tree (pool width >= budget), so
    its offline τ must equal DDTree's on every budget; the fallback scorer runs too."""
    trace = _record(64)
    budgets = (4, 16)
    marginal = evaluate(
        trace, policies=("ddtree", "taps"), budgets=budgets, options={"scorer": "marginal"}
    )
    rows = {(r.policy, r.budget): r for r in marginal}
    for b in budgets:
        assert rows[("taps", b)].tau_greedy == rows[("ddtree", b)].tau_greedy
        assert rows[("taps", b)].tau_sampling == rows[("ddtree", b)].tau_sampling
    fallback = evaluate(trace, policies=("taps",), budgets=budgets)
    assert all(1.0 <= r.tau_greedy and r.mean_nodes <= r.budget for r in fallback)
