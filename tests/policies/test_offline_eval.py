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
    path = tmp_path / "trace.safetensors"
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
    path = tmp_path / "trace.safetensors"
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


def test_d2sd_trace_scores_the_live_policy_tree_exactly(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from difftree_rt.eval import trace as trace_mod
    from difftree_rt.policies import D2SDPolicy, PolicyInput

    target, drafter = trained_pair()
    live: list = []
    original = trace_mod._RecordingPolicy.select

    def select(self, inputs):  # type: ignore[no-untyped-def]
        # What the live d2sd policy builds from this round's drafts: its boundaries' rows are
        # the recorded all-boundary rows (same blocks), so index them.
        for alternative in (True, False):
            policy = D2SDPolicy(24, k=3, alternative=alternative)
            mine = PolicyInput(inputs.draft_logits, inputs.root_token)
            policy.redraft_blocks(mine, drafter.block_size, drafter.mask_token_id)
            rows = mine.state["d2sd"][2][0].long()
            mine.branch_logits = inputs.branch_logits[:, rows]
            live.append(policy.select(mine))
        return original(self, inputs)

    monkeypatch.setattr(trace_mod._RecordingPolicy, "select", select)
    rec = TraceRecorder(target, drafter, budget=32, max_length=512, d2sd=True)
    gen = torch.Generator().manual_seed(9)
    for n in (4, 11):
        prompt = torch.randint(0, 32, (1, n), generator=gen)
        out = rec.generate(prompt, 40)
        assert_greedy_equal(target, out.sequences, greedy_reference(target, prompt, 40))
    trace = rec.trace
    assert trace.meta["d2sd"] and trace.rounds[0].branch_token.shape == (7, 7, 2)
    for alternative, offset in ((True, 0), (False, 1)):
        sel = _Selector("d2sd", 24, default_cost_table(), {"k": 3, "alternative": alternative})
        chain = _Selector("chain", 24, default_cost_table(), {})
        for i, r in enumerate(trace.rounds):
            stream = trace.sequences[r.seq][: r.ctx_len + 1]
            tree = sel.tree(r, stream, 32)
            want = live[2 * i + offset]
            n = int(want.num_nodes[0])
            assert int(tree.num_nodes[0]) == n
            assert torch.equal(tree.token[0, :n], want.token[0, :n])
            assert torch.equal(tree.parent[0, :n], want.parent[0, :n])
            assert torch.equal(tree.score[0, :n], want.score[0, :n])
            acc, covered, _, hits, nodes = _score_round(tree, r)
            assert covered and hits == nodes  # every branch row was verified: exact τ
            # The joint tree contains the first draft's chain (24 >= L1 + 3 * L2 here); the
            # recorded tree holds the whole first draft.
            chain_acc, chain_cov, _, chain_hits, chain_nodes = _score_round(
                chain.tree(r, stream, 32), r
            )
            assert chain_cov and chain_hits == chain_nodes
            assert acc >= chain_acc
    rows = {r.policy: r for r in evaluate(trace, policies=("chain", "d2sd"), budgets=(24,))}
    assert rows["d2sd"].round_coverage == 1.0 and rows["d2sd"].node_coverage == 1.0
    assert rows["d2sd"].tau_greedy >= rows["chain"].tau_greedy
    # A trace without second-pass drafts cannot score d2sd.
    monkeypatch.undo()
    plain = _record(16)
    try:
        evaluate(plain, policies=("d2sd",), budgets=(8,))
    except ValueError as e:
        assert "record-trace --d2sd" in str(e)
    else:
        raise AssertionError("d2sd on a plain trace must raise")
