"""D²SD (ALGORITHMS.md §8): re-anchor a second draft at the first draft's likely rejection
boundaries and verify everything as one tree.

Vocabulary: B batch (1 on the eager engine path), L1 first-draft depth, K branches,
S2 / L2 = S2 - 1 the second drafter's block size / depth, V vocabulary, N = budget + 1.

One round: the first draft's top-1 chain with confidences ``c_j``; the K most likely
boundaries i under ``r(i) = (Π_{j<=i} c_j)(1 - c_{i+1})`` (``ops.d2sd_boundaries``); one
batched second pass over the blocks ``[b, d_1..d_i, MASK...]`` (run by the decoder with the
variable-prefix drafter); the first draft and the branches merged into one trie with shared
trunks (``ops.d2sd_select``), verified in one target forward and walked like any tree — so
the policy is lossless for greedy and sampled decoding like every other tree.

The published code keeps the K + 1 rows separate and recomputes shared prefixes in every
row; the trie verifies each distinct prefix once (fewer rows for the same acceptance).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..tree import DraftTree
from ._validate import check_bool, check_int
from .base import DraftPolicy, PolicyInput, PolicyNeeds

__all__ = ["D2SDPolicy", "branch_blocks", "branch_rows"]


def branch_blocks(
    root_token: Tensor, trunk_token: Tensor, boundary: Tensor, block_size: int, mask_token_id: int
) -> Tensor:
    """The second pass's blocks: row k = ``[root, trunk[:i_k], MASK, ...]``.

    Args:
        root_token: ``[B]`` bonus tokens.
        trunk_token: ``[B, L1]`` the first draft's tokens (depth j + 1 at column j).
        boundary: ``[B, K]`` visible-prefix lengths (``<= min(L1, block_size - 1)``; -1 rows
            get no visible prefix).
        block_size: S2, the second drafter's block size.
        mask_token_id: the second drafter's mask token.

    Returns:
        int64 ``[B, K, S2]`` on ``trunk_token``'s device; device ops only (no host read).
    """
    B, L1 = trunk_token.shape
    K = boundary.shape[1]
    device = trunk_token.device
    slots = torch.arange(1, block_size, device=device)
    at = trunk_token.to(torch.long)[:, (slots - 1).clamp(max=L1 - 1)]  # [B, S2 - 1]
    visible = slots[None, None, :] <= boundary.to(device=device, dtype=torch.long)[:, :, None]
    body = torch.where(visible, at[:, None, :], torch.full_like(at[:, None, :], mask_token_id))
    head = root_token.to(device=device, dtype=torch.long)[:, None, None].expand(B, K, 1)
    return torch.cat([head, body], dim=2)


def branch_rows(
    trunk_token: Tensor,
    boundary: Tensor,
    top_token: Tensor,
    top_logprob: Tensor,
    alternative: bool,
) -> tuple[Tensor, Tensor]:
    """The branches' tokens and log-probs from the second pass's top-1 (and top-2) candidates.

    Args:
        trunk_token: ``[B, L1]`` the first draft.
        boundary: ``[B, R]`` each branch's visible-prefix length i (-1: unused).
        top_token, top_logprob: ``[B, R, L2, W]`` the second pass's top-W per depth (W >= 1;
            W >= 2 for ``alternative``).
        alternative: at depth i + 1 (where the branch exists because the first draft's token
            there is likely rejected) take the best token other than the first draft's;
            otherwise the plain top-1 (the published rule).

    Returns:
        (branch_token int64, branch_logprob float32), each ``[B, R, L2]``.
    """
    branch_token = top_token[..., 0].to(torch.long).contiguous()
    branch_logprob = top_logprob[..., 0].contiguous()
    if not alternative or top_token.shape[-1] < 2:
        return branch_token, branch_logprob
    at = boundary.to(torch.long).clamp(min=0)[..., None]  # [B, R, 1]
    first = torch.gather(branch_token, 2, at)
    rejected = torch.gather(trunk_token.to(torch.long), 1, at[..., 0])[..., None]
    swap = first == rejected
    alt_token = torch.where(swap, torch.gather(top_token[..., 1].to(torch.long), 2, at), first)
    alt_logprob = torch.where(
        swap,
        torch.gather(top_logprob[..., 1], 2, at),
        torch.gather(branch_logprob, 2, at),
    )
    return branch_token.scatter(2, at, alt_token), branch_logprob.scatter(2, at, alt_logprob)


class D2SDPolicy(DraftPolicy):
    """D²SD: the first draft plus ``k`` branches re-drafted after its most likely rejection
    boundaries, verified as one tree (shared trunks once).

    Args:
        budget: draft nodes per round (the joint tree is cut best-first when it has more:
            at most ``L1 + k * L2`` distinct nodes).
        k: branches (boundaries) per round, >= 1 (the paper uses 4); at most L1 are used.
        vp_drafter: the second-pass drafter, a :class:`~difftree_rt.models.DFlashDrafter`
            trained with variable visible prefixes (``DrafterTrainConfig.prefix_geom``); it must
            read the same target layers as the first drafter. None re-uses the first drafter
            (the paper's ablation: it still re-anchors, with less accurate branches).
    """

    name = "d2sd"
    # both passes, the boundaries and the joint tree are device-only
    needs = PolicyNeeds(graph_safe=True, redraft=True)

    def __init__(
        self, budget: int = 64, *, k: int = 4, vp_drafter: Any = None, alternative: bool = True
    ) -> None:
        super().__init__(budget)
        self.k = check_int("k", k, 1)
        if vp_drafter is not None:
            from ..models.dflash import DFlashDrafter

            if not isinstance(vp_drafter, DFlashDrafter):
                raise TypeError(
                    f"vp_drafter must be a DFlashDrafter or None, got {type(vp_drafter).__name__}"
                )
        self.vp_drafter = vp_drafter
        self.alternative = check_bool("alternative", alternative)

    def redraft_rows(self) -> int:
        return self.k

    def redraft_blocks(self, inputs: PolicyInput, block_size: int, mask_token_id: int) -> Tensor:
        from .. import ops

        logits = inputs.draft_logits
        L1 = logits.shape[1]
        token, logprob = ops.topk_logprobs(logits, 1)
        # Everything stays on the logits' device (cuda/d2sd.cu on CUDA): no host read here.
        trunk_token, trunk_logprob = token[..., 0].contiguous(), logprob[..., 0].contiguous()
        # A branch needs a first-draft token to keep and a slot to re-draft: i < min(L1, L2).
        # r(i) for those i reads only the first min(L1, L2) confidences.
        m = min(L1, block_size - 1)
        boundary = ops.d2sd_boundaries(trunk_logprob[:, :m].contiguous(), min(self.k, m))
        inputs.state["d2sd"] = (trunk_token, trunk_logprob, boundary)
        return branch_blocks(inputs.root_token, trunk_token, boundary, block_size, mask_token_id)

    def select(self, inputs: PolicyInput) -> DraftTree:
        from .. import ops

        if inputs.branch_logits is None or "d2sd" not in inputs.state:
            raise ValueError(
                "d2sd: PolicyInput.branch_logits is missing; the policy needs the decoder's "
                "second drafting pass (redraft_blocks, then the drafter's draft_branches)"
            )
        trunk_token, trunk_logprob, boundary = inputs.state["d2sd"]
        branch = inputs.branch_logits
        B, R, L2, V = branch.shape
        width = 2 if self.alternative and V > 1 else 1
        token, logprob = ops.topk_logprobs(branch.reshape(B * R, L2, V), width)
        token = token.reshape(B, R, L2, width)
        logprob = logprob.reshape(B, R, L2, width)
        branch_token, branch_logprob = branch_rows(
            trunk_token, boundary, token, logprob, self.alternative
        )
        # On the trunk's device: cuda/d2sd.cu for CUDA logits (bit-identical), no host read.
        tree = ops.d2sd_select(
            trunk_token,
            trunk_logprob,
            boundary,
            branch_token,
            branch_logprob,
            self.budget,
            inputs.root_token.to(trunk_token.device),
        )
        return tree.to(inputs.draft_logits.device)

    def __repr__(self) -> str:
        vp = "own" if self.vp_drafter is None else "vp"
        return f"D2SDPolicy(budget={self.budget}, k={self.k}, drafter={vp})"
