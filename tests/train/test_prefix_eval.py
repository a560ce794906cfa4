"""prefix_accuracy: per-block reference (one block at a time, inference-style call), checks.

Vocabulary: N sequences, T sequence length, m anchors, S block size, p visible prefix length.
"""

from __future__ import annotations

import pytest
import torch
from test_drafter_train import _cfg, _stream, _target

from difftree_rt.train.drafter import sample_anchors, target_features, train_drafter
from difftree_rt.train.prefix_eval import prefix_accuracy


def _reference(
    drafter,
    target,
    seqs: torch.Tensor,
    p: int,
    anchors: int,
    seed: int,
    batch: int,
    reveal: bool = True,
) -> tuple[float, float]:
    """(acc1, accepted) computed block by block: the block [x[a], x[a+1..a+p], MASK...] sees
    the features of x[:a] (all of them, no mask) and itself; ``reveal=False`` masks the prefix
    slots too. Scored from slot p + 1. Anchors drawn per batch."""
    size = drafter.block_size
    gen = torch.Generator().manual_seed(seed)
    anc = torch.cat(
        [
            sample_anchors(len(seqs[i : i + batch]), seqs.shape[1], size, anchors, gen)
            for i in range(0, seqs.shape[0], batch)
        ]
    )
    feats = target_features(target, seqs, drafter.target_layer_ids, autocast=False)
    hits = acc = n = 0
    for b in range(seqs.shape[0]):
        for a in anc[b].tolist():
            block = seqs[b, a : a + size].clone()
            block[(p + 1 if reveal else 1) :] = drafter.mask_token_id
            pos = torch.arange(a, a + size)[None]
            with torch.no_grad():
                hidden = drafter(block[None], feats[b : b + 1, :a], pos)
                pred = drafter.compute_logits(hidden[:, 1:]).argmax(-1)[0]  # slots 1..S-1
            ok = (pred == seqs[b, a + 1 : a + size]).tolist()[p:]
            hits += int(ok[0])
            run = 0
            while run < len(ok) and ok[run]:
                run += 1
            acc += run
            n += 1
    return hits / n, acc / n


def test_prefix_accuracy_matches_per_block_reference() -> None:
    target = _target()
    # A drafter that has learned something (accuracies well away from 0 and 1).
    drafter = train_drafter(
        target, _stream(), _cfg(steps=40, lr=1e-2, prefix_geom=0.3), progress=False
    ).drafter
    g = torch.Generator().manual_seed(3)
    seqs = _stream(seed=5).sample(6, 40, g)
    res = prefix_accuracy(drafter, target, seqs, (0, 1, 3), anchors=5, batch_size=6, seed=11)
    assert sorted(res) == [0, 1, 3]
    for p, r in res.items():
        ref_acc1, ref_accepted = _reference(drafter, target, seqs, p, 5, 11, 6)
        assert r["blocks"] == 30.0
        assert r["acc1"] == pytest.approx(ref_acc1, abs=1e-6), p
        assert r["accepted"] == pytest.approx(ref_accepted, abs=1e-5), p
    assert 0.0 < res[0]["acc1"] < 1.0
    assert drafter.training is False
    hidden = prefix_accuracy(
        drafter, target, seqs, (0, 1, 3), anchors=5, batch_size=6, seed=11, reveal=False
    )
    assert hidden[0] == res[0]  # nothing to hide at p = 0
    for p in (1, 3):
        ref_acc1, ref_accepted = _reference(drafter, target, seqs, p, 5, 11, 6, reveal=False)
        assert hidden[p]["acc1"] == pytest.approx(ref_acc1, abs=1e-6), p
        assert hidden[p]["accepted"] == pytest.approx(ref_accepted, abs=1e-5), p
    # The prefix changes the drafter's view: revealed and hidden differ somewhere.
    assert any(hidden[p] != res[p] for p in (1, 3))


def test_prefix_accuracy_batches_and_checks() -> None:
    target = _target()
    drafter = train_drafter(target, _stream(), _cfg(steps=2), progress=False).drafter
    seqs = _stream(seed=2).sample(5, 30, torch.Generator().manual_seed(0))
    # Weighted by blocks: a ragged last batch gives the mean over all blocks, and the same
    # seed draws the same anchors (identical results).
    one = prefix_accuracy(drafter, target, seqs, (0, 2), anchors=4, batch_size=2, seed=1)
    again = prefix_accuracy(drafter, target, seqs, (0, 2), anchors=4, batch_size=2, seed=1)
    assert one == again and one[0]["blocks"] == 20.0
    for p in (0, 2):
        ref_acc1, _ = _reference(drafter, target, seqs, p, 4, 1, 2)
        assert one[p]["acc1"] == pytest.approx(ref_acc1, abs=1e-6)
    with pytest.raises(ValueError, match="prefix length"):
        prefix_accuracy(drafter, target, seqs, (7,))  # block size 8: p <= 6
    with pytest.raises(ValueError, match="exceed block size"):
        prefix_accuracy(drafter, target, seqs[:, :8], (0,))
