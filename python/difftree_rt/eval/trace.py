"""Trace recording during ``generate`` (opt-in): per round, the draft candidates, a large
verified DDTree, the target's greedy choice, the target's probability of every tree edge and
its top-k probabilities at every node.

Vocabulary: L draft depth, K recorded candidates per depth (``min(budget, V)``), n valid nodes
of the recorded tree (root included), k top-k width.

Recording wraps the decoder's two seams instead of changing it: a :class:`DraftPolicy` that
builds the recorded tree (DDTree at the record budget, so every smaller DDTree/CaDDTree is a
subset of it) and keeps the candidates, and a :class:`TargetAdapter` whose ``verify`` also
hands the node logits to the recorder. Generation itself is the ordinary lossless decoder.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..engine.decoder import GenerationOutput, SpeculativeDecoder
from ..engine.sampling import SamplingParams, target_probs
from ..models.target import TargetAdapter, TargetOutput
from ..policies import DraftPolicy, PolicyInput, PolicyNeeds
from ..safe_files import read_tensor_file, write_tensor_file
from ..tree import DraftTree

__all__ = ["Trace", "TraceRecorder", "TraceRound"]

_FORMAT = "difftree_rt.trace/2"
_REMEDY = "Record it again with `difftree-rt record-trace --out TRACE.safetensors`."


@dataclass
class TraceRound:
    """One recorded round (CPU tensors).

    Attributes:
        seq: index of the generation (into :attr:`Trace.sequences`).
        ctx_len: committed length at the round; the stream the policies see is
            ``sequences[seq][:ctx_len + 1]`` (it ends with the root/bonus token).
        cand_token: int32 ``[L, K]``; cand_logprob: float32 ``[L, K]``.
        token, parent, depth: int32 ``[n]`` the recorded (verified) tree, best-first.
        choice: int64 ``[n]`` the target's greedy choice at each node.
        edge_prob: float32 ``[n]`` the target's probability of node i's token at its parent
            (processed with :attr:`Trace.prob_params`; 1 for the root).
        topk_token: int32 ``[n, k]``; topk_prob: float32 ``[n, k]`` at each node.
        accepted: accepted draft nodes of the actual run.
        branch_token: int32 ``[m, L2, 2]`` / branch_logprob: float32 ``[m, L2, 2]`` (traces
            recorded with ``d2sd=True``, else None): D²SD's second pass for every boundary
            i = 0..m-1 (row i keeps the first i first-draft tokens), top-2 per depth; the
            recorded tree contains every such branch (both D²SD token rules), so d2sd is
            scored exactly.
    """

    seq: int
    ctx_len: int
    cand_token: Tensor
    cand_logprob: Tensor
    token: Tensor
    parent: Tensor
    depth: Tensor
    choice: Tensor
    edge_prob: Tensor
    topk_token: Tensor
    topk_prob: Tensor
    accepted: int = -1
    branch_token: Tensor | None = None
    branch_logprob: Tensor | None = None


@dataclass
class Trace:
    """Recorded rounds of one or more generations, with what produced them."""

    rounds: list[TraceRound] = field(default_factory=list)
    sequences: list[list[int]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the trace as one safetensors file (tensors; sequences and meta as JSON)."""
        rounds = [dict(r.__dict__) for r in self.rounds]
        write_tensor_file(
            path, _FORMAT, {"meta": self.meta, "sequences": self.sequences, "rounds": rounds}
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Trace:
        """Read a trace written by :meth:`save`; ValueError naming ``path`` for anything else
        (a pickle file is refused unread)."""
        d = read_tensor_file(path, _FORMAT, _REMEDY)
        try:
            rounds = [TraceRound(**r) for r in d["rounds"]]
            return cls(rounds, d["sequences"], d["meta"])
        except (KeyError, TypeError) as e:
            raise ValueError(f"{path}: malformed trace ({e}). {_REMEDY}") from None


class _RecordingPolicy(DraftPolicy):
    """DDTree at the record budget; with ``d2sd`` also D²SD's second pass for every boundary,
    verified together (the union of the DDTree and all branch rows, as one pool)."""

    name = "ddtree"

    def __init__(self, budget: int, recorder: TraceRecorder, d2sd: bool, vp: Any) -> None:
        super().__init__(budget)
        self.recorder = recorder
        self.needs = PolicyNeeds(redraft=d2sd)
        self.vp_drafter = vp

    def capacity(self, max_depth: int) -> int:
        # The first draft, then two rows (both D²SD token rules) per boundary, each at most
        # max_depth deep.
        extra = (2 * max_depth + 1) * max_depth if self.needs.redraft else 0
        return self.budget + 1 + extra

    def redraft_blocks(self, inputs: PolicyInput, block_size: int, mask_token_id: int) -> Tensor:
        from .. import ops
        from ..policies.d2sd import branch_blocks

        token, _ = ops.topk_logprobs(inputs.draft_logits, 1)
        m = min(token.shape[1], block_size - 1)
        boundary = torch.arange(m, dtype=torch.int32, device=token.device)[None]
        inputs.state["record"] = (token[..., 0], boundary)
        return branch_blocks(inputs.root_token, token[..., 0], boundary, block_size, mask_token_id)

    def select(self, inputs: PolicyInput) -> DraftTree:
        from .. import ops

        V = inputs.draft_logits.shape[-1]
        token, logprob = ops.topk_logprobs(inputs.draft_logits, max(1, min(self.budget, V)))
        tree = ops.ddtree_select_from_candidates(token, logprob, self.budget, inputs.root_token)
        branches = None
        if self.needs.redraft:
            assert inputs.branch_logits is not None
            B, R, L2, _ = inputs.branch_logits.shape
            top = ops.topk_logprobs(inputs.branch_logits.reshape(B * R, L2, V), min(2, V))
            branches = tuple(t.reshape(B, R, L2, -1)[0].cpu() for t in top)
            tree = _with_branches(tree, inputs.state["record"], branches, inputs.root_token)
        ctx = 0 if inputs.committed is None else int(inputs.committed[0])
        self.recorder._on_select(token, logprob, tree, ctx, branches)
        return tree


def _with_branches(
    tree: DraftTree,
    record: tuple[Tensor, Tensor],
    branches: tuple[Tensor, Tensor],
    root_token: Tensor,
) -> DraftTree:
    """The union of ``tree`` (batch 1), the first draft and every D²SD branch row under both
    token rules, as a best-first tree (the pool selector over the merged trie)."""
    from .. import ops
    from ..policies.d2sd import branch_rows

    trunk, boundary = (t.cpu() for t in record)
    n = int(tree.num_nodes[0])
    token = tree.token[0, :n].tolist()
    parent = tree.parent[0, :n].tolist()
    score = tree.score[0, :n].tolist()
    edge = [0.0] + [min(0.0, score[i] - score[parent[i]]) for i in range(1, n)]
    child = {(parent[i], token[i]): i for i in range(1, n)}

    def add(cur: int, tok: int, lp: float) -> int:
        nxt = child.get((cur, tok))
        if nxt is None:
            nxt = len(token)
            child[(cur, tok)] = nxt
            token.append(tok)
            parent.append(cur)
            edge.append(min(0.0, lp))
        return nxt

    top_token, top_logprob = branches  # [R, L2, W]
    cur = 0  # the first draft itself (row 0 of every d2sd tree), whole
    for j in range(trunk.shape[1]):
        cur = add(cur, int(trunk[0, j]), 0.0)
    for alternative in (False, True):
        rows, lps = branch_rows(trunk, boundary, top_token[None], top_logprob[None], alternative)
        for r, i in enumerate(boundary[0].tolist()):
            cur = 0
            for j in range(i):
                cur = add(cur, int(trunk[0, j]), 0.0)
            for j in range(i, rows.shape[2]):
                cur = add(cur, int(rows[0, r, j]), float(lps[0, r, j]))
    size = len(token)
    pool_token = torch.tensor([token], dtype=torch.int64)
    pool_token[0, 0] = int(root_token.reshape(-1)[0])
    out = ops.taps_select(
        pool_token,
        torch.tensor([parent], dtype=torch.int64),
        torch.tensor([size]),
        torch.tensor([edge], dtype=torch.float32),
        max(1, size - 1),
        max_depth=max(tree.max_depth, int(top_token.shape[1])),
    )
    return out.to(tree.device)


class _RecordingAdapter(TargetAdapter):
    recorder: TraceRecorder

    def verify(
        self,
        tree_tokens: Tensor,
        depth: Tensor,
        anc: Tensor | None,
        num_nodes: Tensor | None = None,
    ) -> TargetOutput:
        out = super().verify(tree_tokens, depth, anc, num_nodes)
        self.recorder._on_verify(out.logits)
        return out


class TraceRecorder:
    """Generate with a large verified DDTree and record every round.

    Args:
        target: the HF causal LM. drafter: its DFlash drafter.
        budget: the recorded tree size (DDTree; 256-1024 covers the trees of the policies
            evaluated at smaller budgets).
        max_length: target cache rows (prompt + new tokens + one tree).
        prob_params: the processed distribution of ``edge_prob``/``topk_prob`` (default T = 1;
            use the deployment's temperature/top-k/top-p for its sampling estimate).
        topk: k of the recorded per-node top-k.
        d2sd: also run and verify D²SD's second pass for every boundary (so ``eval-policies``
            scores d2sd exactly); ``vp_drafter`` is its second drafter (None: ``drafter``).

    Example:
        rec = TraceRecorder(target, drafter, budget=512)
        rec.generate(prompt_ids, 128)
        rec.trace.save("trace.safetensors")
    """

    def __init__(
        self,
        target: nn.Module,
        drafter: nn.Module,
        budget: int = 512,
        max_length: int = 4096,
        *,
        prob_params: SamplingParams | None = None,
        topk: int = 8,
        d2sd: bool = False,
        vp_drafter: nn.Module | None = None,
    ) -> None:
        self.trace = Trace(
            meta={"record_budget": budget, "topk": topk, "d2sd": d2sd, "vp": vp_drafter is not None}
        )
        self.prob_params = prob_params or SamplingParams(temperature=1.0)
        self.prob_params.validate()
        self.topk = topk
        adapter = _RecordingAdapter(
            target,
            max_length=max_length,
            batch_size=1,
            feature_layers=list(drafter.config.target_layer_ids),
            validate=False,
        )
        adapter.recorder = self
        self.decoder = SpeculativeDecoder(
            adapter,
            drafter,
            _RecordingPolicy(budget, self, d2sd, vp_drafter),
            max_length=max_length,
        )
        self.trace.meta.update(
            {
                "vocab": int(target.config.vocab_size),
                "max_depth": int(drafter.block_size - 1),
                "prob_temperature": self.prob_params.temperature,
                "prob_top_k": self.prob_params.top_k,
                "prob_top_p": self.prob_params.top_p,
                "target": type(target).__name__,
                "dtype": str(next(target.parameters()).dtype),
                "device": str(next(target.parameters()).device),
            }
        )
        self._pending: dict[str, Any] | None = None
        self._rounds: list[TraceRound] = []

    def _on_select(
        self,
        token: Tensor,
        logprob: Tensor,
        tree: DraftTree,
        ctx_len: int,
        branches: tuple[Tensor, Tensor] | None = None,
    ) -> None:
        self._pending = {
            "cand": (token[0].cpu(), logprob[0].cpu()),
            "tree": tree,
            "ctx": ctx_len,
            "branches": branches,
        }

    @torch.no_grad()
    def _on_verify(self, logits: Tensor) -> None:
        p = self._pending
        assert p is not None, "verify without a recorded selection"
        self._pending = None
        tree: DraftTree = p["tree"]
        n = int(tree.num_nodes[0])
        lg = logits[:, :n].float()  # [1, n, V]
        choice = lg.argmax(dim=-1)[0].cpu()  # greedy: ties to the lowest id
        probs = target_probs(lg, self.prob_params)[0]  # [n, V]
        parent = tree.parent[0, :n].long()
        tok = tree.token[0, :n].long()
        edge = torch.ones(n, dtype=torch.float32, device=probs.device)
        if n > 1:
            edge[1:] = probs[parent[1:], tok[1:]]
        top = probs.topk(min(self.topk, probs.shape[-1]), dim=-1)
        self._rounds.append(
            TraceRound(
                seq=len(self.trace.sequences),
                ctx_len=int(p["ctx"]),
                cand_token=p["cand"][0].to(torch.int32),
                cand_logprob=p["cand"][1],
                token=tree.token[0, :n].cpu(),
                parent=tree.parent[0, :n].cpu(),
                depth=tree.depth[0, :n].cpu(),
                choice=choice,
                edge_prob=edge.cpu(),
                topk_token=top.indices.to(torch.int32).cpu(),
                topk_prob=top.values.cpu(),
                branch_token=None if p["branches"] is None else p["branches"][0].to(torch.int32),
                branch_logprob=None if p["branches"] is None else p["branches"][1],
            )
        )

    def generate(self, input_ids: Tensor, max_new_tokens: int, **kwargs: Any) -> GenerationOutput:
        """``SpeculativeDecoder.generate`` with recording; the rounds are added to
        :attr:`trace` together with the generated sequence."""
        self._rounds = []
        out = self.decoder.generate(input_ids, max_new_tokens, **kwargs)
        for r, acc in zip(self._rounds, out.stats.accepted_lengths):
            r.accepted = int(acc)
        self.trace.rounds.extend(self._rounds)
        self.trace.sequences.append(out.sequences[0].tolist())
        return out

    def generate_many(self, prompts: Sequence[Tensor], max_new_tokens: int, **kwargs: Any) -> Trace:
        for prompt in prompts:
            self.generate(prompt, max_new_tokens, **kwargs)
        return self.trace
