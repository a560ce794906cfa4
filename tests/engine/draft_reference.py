"""Drafts and greedy-chain acceptance recomputed from scratch, independently of the engine.

Vocabulary: T prompt length, S drafter block size, L = S - 1 draft depth, V vocabulary.

:func:`scratch_logits` runs the drafter's stateless forward on the target features of exactly
the committed rows (no drafter cache, no key span); :func:`chain_acceptance` replays greedy
"chain" decoding on a finished sequence with those drafts: each round's accepted length is the
longest prefix of the drafter's argmax tokens that the target's greedy tokens confirm.
"""

from __future__ import annotations

import copy
import functools

import torch
from tests.tolerance import Ref, fa_bound
from torch import nn

from difftree_rt.models import DFlashDrafter
from difftree_rt.models.dflash import extract_features


@functools.cache
def fp64_pair(target: nn.Module, drafter: DFlashDrafter) -> tuple[nn.Module, DFlashDrafter]:
    """fp64 copies of a pair (the drafter bound to the copied target); cached per pair."""
    t64, d64 = copy.deepcopy(target).double(), copy.deepcopy(drafter).double()
    return t64, d64.bind(t64)


@torch.no_grad()
def scratch_logits(
    target: nn.Module, drafter: DFlashDrafter, seq: torch.Tensor, start: int, block: torch.Tensor
) -> torch.Tensor:
    """Draft logits ``[1, L, V]`` from scratch: the target features of ``seq[:start]`` (``seq``
    1-D token ids), ``block [1, S]`` at positions ``start .. start + S - 1``."""
    hidden = target(seq[None, :start], output_hidden_states=True).hidden_states
    feats = extract_features(hidden, drafter.config.target_layer_ids)
    positions = start + torch.arange(block.shape[1])[None]
    return drafter.compute_logits(drafter(block, feats, positions))[:, 1:]


def scratch_ref(
    target: nn.Module, drafter: DFlashDrafter, seq: torch.Tensor, start: int, block: torch.Tensor
) -> Ref:
    """:func:`scratch_logits` at the pair's precision (``low``) and in fp64 (``exact``)."""
    t64, d64 = fp64_pair(target, drafter)
    return Ref(
        scratch_logits(target, drafter, seq, start, block),
        scratch_logits(t64, d64, seq, start, block),
    )


def chain_acceptance(
    target: nn.Module, drafter: DFlashDrafter, seq: torch.Tensor, prompt_len: int, depth: int
) -> tuple[list[int], int]:
    """Greedy chain decoding's accepted lengths, replayed on the finished greedy sequence.

    Args:
        seq: ``[T + new]`` the prompt and the greedy tokens (HF greedy's).
        prompt_len: T.
        depth: the chain's draft depth (``min(budget, L)``).

    Returns:
        (accepted length per round, how many leading rounds are decided: a round whose
        compared drafts have a top-2 gap within twice the fp32 error bound could go either way
        on another CPU, so it and the rounds after it are not comparable).
    """
    new = seq.numel() - prompt_len
    start, accepted, decided = prompt_len, [], None
    while start - prompt_len + 1 < new:
        block = drafter.make_block(seq[start : start + 1])
        ref = scratch_ref(target, drafter, seq, start, block)
        drafts = ref.exact[0, :depth].argmax(-1)
        remaining = new - (start - prompt_len + 1)
        want = seq[start + 1 : start + 1 + min(depth, remaining)]
        match = drafts[: want.numel()] == want
        full = int(match.long().cumprod(0).sum())
        # The depths whose argmax decided the length: the matched ones and the first miss.
        top2 = ref.exact[0, : min(full + 1, depth)].topk(2, dim=-1).values
        if decided is None and bool(
            (top2[:, 0] - top2[:, 1] <= 2 * fa_bound(ref.low, ref.exact)).any()
        ):
            decided = len(accepted)
        acc = min(full, remaining)
        accepted.append(acc)
        start += acc + 1
    return accepted, len(accepted) if decided is None else decided
