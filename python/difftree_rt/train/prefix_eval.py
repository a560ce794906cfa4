"""Drafter accuracy as a function of the visible prefix (what a variable-prefix drafter is for).

Vocabulary: N sequences, T sequence length, m anchors (blocks) per sequence, S block size,
p visible prefix length (true tokens after the anchor token).

D²SD (ALGORITHMS.md §8) re-drafts a block with ``[x[a], x[a+1 .. a+p], MASK x (S-1-p)]`` visible:
the prefix tokens are known (a hypothesised accepted prefix), the drafter predicts the rest.
:func:`prefix_accuracy` measures, on held-out sequences, how well a drafter predicts the first
masked slot (and the teacher-forced chain after it) for fixed p: the same anchors and target
features for every p and every drafter evaluated with the same seed, so the numbers of two
drafters (e.g. a plain DFlash drafter, trained at p = 0 only, and a variable-prefix one) are
paired comparisons on identical blocks; ``reveal=False`` gives the same slots' accuracy with
the prefix masked (what drafting without a visible prefix gets there).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from difftree_rt.models import DFlashDrafter

from .drafter import block_attention_mask, build_blocks, sample_anchors, target_features

__all__ = ["prefix_accuracy"]


@torch.no_grad()
def prefix_accuracy(
    drafter: DFlashDrafter,
    target: nn.Module,
    sequences: torch.Tensor,
    prefixes: Sequence[int] = (0, 2, 4, 8),
    *,
    anchors: int = 16,
    batch_size: int = 8,
    seed: int = 0,
    autocast: bool = False,
    reveal: bool = True,
) -> dict[int, dict[str, float]]:
    """First-masked-slot accuracy of ``drafter`` on ``sequences`` for each visible prefix p.

    For every sequence, ``anchors`` distinct anchors a (drawn with a generator seeded by
    ``seed``; identical across p and across drafters) define blocks whose slots 1..p hold the
    true tokens and whose slots p+1..S-1 are masked; the block sees the target features strictly
    before a (as in training, :func:`difftree_rt.train.drafter.block_attention_mask`).

    Args:
        drafter: a DFlash drafter bound to ``target`` (any dtype; it is run as it is).
        target: the frozen HF causal LM whose features the drafter reads.
        sequences: token ids [N, T] with T > S (e.g. held-out windows).
        prefixes: the visible prefix lengths to evaluate, each in 0..S-2.
        anchors: blocks per sequence (capped at T - S).
        batch_size: sequences per forward pass.
        seed: anchor draw seed.
        autocast: bf16 autocast for the target and drafter passes.
        reveal: False masks the prefix slots too (the block is the plain DFlash block
            ``[x[a], MASK x (S-1)]``) while still scoring from slot p + 1: the baseline of a
            drafter that does not get to see the prefix (a chain's depth-(p+1) accuracy).

    Returns:
        ``{p: {"acc1": ..., "accepted": ..., "blocks": ...}}``: ``acc1`` the top-1 accuracy at
        slot p + 1 (the first masked slot), ``accepted`` the mean number of masked slots the
        drafter's per-slot argmax gets right in a row from slot p + 1 (a teacher-forced proxy
        of the chain's accepted length after the prefix), ``blocks`` the number of blocks.
    """
    size = drafter.block_size
    if sequences.dim() != 2:
        raise ValueError(f"sequences must be [N, T], got shape {tuple(sequences.shape)}")
    if sequences.shape[1] <= size:
        raise ValueError(f"sequence length {sequences.shape[1]} must exceed block size {size}")
    for p in prefixes:
        if not 0 <= p <= size - 2:
            raise ValueError(f"prefix length {p} outside 0..{size - 2} (block size {size})")
    dev = next(target.parameters()).device
    was_training = drafter.training
    drafter.eval()
    gen = torch.Generator().manual_seed(seed)
    sums = {p: [0.0, 0.0, 0] for p in prefixes}  # acc1 sum, accepted sum, blocks
    for i in range(0, sequences.shape[0], batch_size):
        tokens = sequences[i : i + batch_size].to(dev)
        b, t_len = tokens.shape
        anc = sample_anchors(b, t_len, size, anchors, gen).to(dev)
        feats = target_features(target, tokens, drafter.target_layer_ids, autocast)
        slot_hits: torch.Tensor | None = None
        for p in prefixes:
            if reveal or slot_hits is None:
                shown = torch.full(anc.shape, p if reveal else 0, dtype=torch.long, device=dev)
                ids, pos, labels = build_blocks(tokens, anc, size, drafter.mask_token_id, shown)
                mask = block_attention_mask(anc, t_len, size)
                with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=autocast):
                    hidden = drafter(ids, feats.to(drafter.dtype), pos, attention_mask=mask)
                    m = anc.shape[1]
                    hidden = hidden.reshape(b, m, size, -1)[:, :, 1:].reshape(b, m * (size - 1), -1)
                    logits = drafter.compute_logits(hidden).float().reshape(b, m, size - 1, -1)
                pred = logits.argmax(-1)  # [B, m, S-1]
                slot_hits = (pred == labels).long()  # slot k = 1..S-1 at index k - 1
            hits = slot_hits[:, :, p:]  # from the first scored slot p + 1
            sums[p][0] += float(hits[:, :, 0].sum())
            sums[p][1] += float(hits.cumprod(-1).sum())
            sums[p][2] += hits.shape[0] * hits.shape[1]
    drafter.train(was_training)
    return {
        p: {"acc1": s[0] / s[2], "accepted": s[1] / s[2], "blocks": float(s[2])}
        for p, s in sums.items()
    }
