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
from ..engine.policies import DraftPolicy, PolicyInput
from ..engine.sampling import SamplingParams, choose_tokens, target_probs
from ..models.target import TargetAdapter, TargetOutput
from ..tree import DraftTree

__all__ = ["Trace", "TraceRecorder", "TraceRound"]

_FORMAT = "difftree_rt.trace/1"


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


@dataclass
class Trace:
    """Recorded rounds of one or more generations, with what produced them."""

    rounds: list[TraceRound] = field(default_factory=list)
    sequences: list[list[int]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def save(self, path: str | os.PathLike[str]) -> None:
        torch.save(
            {
                "format": _FORMAT,
                "meta": self.meta,
                "sequences": self.sequences,
                "rounds": [r.__dict__ for r in self.rounds],
            },
            path,
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Trace:
        d = torch.load(path, map_location="cpu", weights_only=False)
        if not isinstance(d, dict) or d.get("format") != _FORMAT:
            raise ValueError(f"{path}: not a difftree_rt trace (format {_FORMAT!r})")
        return cls([TraceRound(**r) for r in d["rounds"]], d["sequences"], d["meta"])


class _RecordingPolicy(DraftPolicy):
    name = "ddtree"
    needs_context = True

    def __init__(self, budget: int, recorder: TraceRecorder) -> None:
        super().__init__(budget)
        self.recorder = recorder

    def select(self, inputs: PolicyInput) -> DraftTree:
        from .. import ops

        V = inputs.draft_logits.shape[-1]
        token, logprob = ops.topk_logprobs(inputs.draft_logits, max(1, min(self.budget, V)))
        tree = ops.ddtree_select_from_candidates(token, logprob, self.budget, inputs.root_token)
        ctx = inputs.context_ids
        self.recorder._on_select(token, logprob, tree, 0 if ctx is None else ctx.shape[1] - 1)
        return tree


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

    Example:
        rec = TraceRecorder(target, drafter, budget=512)
        rec.generate(prompt_ids, 128)
        rec.trace.save("trace.pt")
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
    ) -> None:
        self.trace = Trace(meta={"record_budget": budget, "topk": topk})
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
            adapter, drafter, _RecordingPolicy(budget, self), max_length=max_length
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

    def _on_select(self, token: Tensor, logprob: Tensor, tree: DraftTree, ctx_len: int) -> None:
        self._pending = {"cand": (token[0].cpu(), logprob[0].cpu()), "tree": tree, "ctx": ctx_len}

    @torch.no_grad()
    def _on_verify(self, logits: Tensor) -> None:
        p = self._pending
        assert p is not None, "verify without a recorded selection"
        self._pending = None
        tree: DraftTree = p["tree"]
        n = int(tree.num_nodes[0])
        lg = logits[:, :n].float()  # [1, n, V]
        choice = choose_tokens(lg, SamplingParams(), 0)[0].cpu()
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
