"""The TAPS edge scorer: training from a recorded trace through ``difftree-rt train-scorer``,
save/load, a valid q_cond (finite, <= 0, per-parent mass <= 1) and lossless greedy decoding
with the trained scorer."""

from __future__ import annotations

import numpy as np
import torch
from engine_helpers import greedy_reference, trained_pair
from test_greedy import assert_greedy_equal

from difftree_rt import SpeculativeDecoder
from difftree_rt.cli import main
from difftree_rt.eval import TraceRecorder
from difftree_rt.policies import TapsPolicy
from difftree_rt.policies.taps import taps_pool
from difftree_rt.policies.taps_scorer import EdgeScorer, train_scorer


def test_train_save_load_and_decode(tmp_path) -> None:  # type: ignore[no-untyped-def]
    target, drafter = trained_pair()
    rec = TraceRecorder(target, drafter, budget=64, max_length=256)
    gen = torch.Generator().manual_seed(9)
    for n in (4, 11):
        rec.generate(torch.randint(0, 32, (1, n), generator=gen), 32)
    trace_path, out = tmp_path / "trace.safetensors", tmp_path / "scorer.safetensors"
    rec.trace.save(trace_path)
    argv = ["train-scorer", str(trace_path), "--width", "16", "--pool-size", "32"]
    assert main([*argv, "--epochs", "2", "--out", str(out)]) == 0
    scorer = EdgeScorer.load(out)
    assert 5e4 < sum(p.numel() for p in scorer.parameters()) < 2e5

    r = rec.trace.rounds[0]
    tok, lp = r.cand_token[None].long(), r.cand_logprob[None]
    pool = taps_pool(tok, lp, 16, 32, torch.tensor([int(r.token[0])]))
    lq = scorer.log_qc(pool, tok, lp)
    n = int(pool.size[0])
    assert lq.dtype == torch.float32 and bool(torch.isfinite(lq).all())
    assert bool((lq[0, 1:n] <= 0).all())
    tot = np.zeros(n)
    np.add.at(tot, pool.parent[0, 1:n].numpy(), np.exp(lq[0, 1:n].double().numpy()))
    assert (tot <= 1 + 1e-5).all()
    assert torch.equal(EdgeScorer.load(out).log_qc(pool, tok, lp), lq)  # deterministic reload

    # with the target's embedding (projected), saved as the projected table
    emb = target.get_input_embeddings().weight.detach().float()
    m = train_scorer([rec.trace], width=16, pool_size=32, epochs=1, embedding=emb)
    m.save(tmp_path / "emb.safetensors")
    torch.testing.assert_close(EdgeScorer.load(tmp_path / "emb.safetensors").log_qc(pool, tok, lp),
                               m.log_qc(pool, tok, lp), atol=2e-3, rtol=0)  # fmt: skip

    prompt = torch.randint(0, 32, (1, 7), generator=gen)
    ref = greedy_reference(target, prompt, 32)
    for policy in (TapsPolicy(16, width=8, scorer=str(out)), TapsPolicy(4, scorer=scorer)):
        res = SpeculativeDecoder(target, drafter, policy).generate(prompt, 32)
        assert_greedy_equal(target, res.sequences, ref)
