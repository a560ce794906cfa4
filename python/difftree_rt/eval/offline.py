"""Score policies on recorded rounds (no target reruns).

Vocabulary: L draft depth, K candidates per depth, n nodes of a tree (root included).

For each round and each (policy, budget) the policy's tree is rebuilt from the recorded
candidates (and, for presto, the recorded stream), then mapped node by node onto the recorded
verified tree by (parent, token):

* greedy: walk the policy's tree with the recorded target choices; τ = accepted + 1. This is
  exactly the accepted length that policy would have had, as long as the walk stays inside the
  recorded tree ("covered"); a walk that reaches a node the recorded tree lacks is counted up
  to that node (a lower bound) and the round is reported as uncovered.
* sampling: τ = 1 + Σ_{u ∈ T} p(u), p(u) = Π of the recorded target edge probabilities along
  u's path (ALGORITHMS.md §3: the expected accepted count of a fixed tree); nodes outside the
  recorded tree contribute nothing (a lower bound) and lower the node coverage.

DDTree and CaDDTree trees at budgets <= the record budget are subsets of the recorded DDTree
(same candidates, best-first prefixes), so they are always fully covered. With a cost table,
tokens per unit cost = Σ τ / Σ (C_d + C_v(n; ctx)) over rounds (d2sd pays C_d twice: its second
drafting pass is a second drafter forward).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from ..policies.cost import CostTable, load_cost_table
from ..policies.ngram import NGramPrior
from ..tree import DraftTree
from .trace import Trace, TraceRound

__all__ = ["EvalRow", "evaluate", "format_table"]

POLICY_NAMES = ("chain", "ddtree", "caddtree", "presto", "taps", "d2sd")


@dataclass
class EvalRow:
    """One (policy, budget) over all rounds of a trace."""

    policy: str
    budget: int
    rounds: int
    tau_greedy: float
    tau_sampling: float
    mean_nodes: float
    round_coverage: float
    node_coverage: float
    tokens_per_cost_greedy: float
    tokens_per_cost_sampling: float
    cost_unit: str


class _Selector:
    """Rebuilds one policy's tree per recorded round."""

    def __init__(self, name: str, budget: int, table: CostTable, options: dict[str, Any]) -> None:
        if name not in POLICY_NAMES:
            raise ValueError(f"policy must be one of {', '.join(POLICY_NAMES)}, got {name!r}")
        self.name, self.budget, self.table = name, budget, table
        self.lam = float(options.get("lam", 0.2))
        self.order = int(options.get("order", 3))
        self.alpha = float(options.get("alpha", 1.0))
        self.prior = NGramPrior(self.order) if name == "presto" else None
        self.taps = None
        if name == "taps":
            from ..policies.taps import TapsPolicy

            # Same construction as the engine policy: pool width = budget, pool of 2 x budget.
            self.taps = TapsPolicy(self.budget, scorer=options.get("scorer"))
        self.k = int(options.get("k", 4))
        self.alternative = bool(options.get("alternative", True))
        self._seq = -1

    def tree(self, r: TraceRound, stream: list[int], vocab: int) -> DraftTree:
        from .. import ops

        tok, lp = r.cand_token[None], r.cand_logprob[None]
        L, K = tok.shape[1], tok.shape[2]
        root = torch.tensor([stream[-1]])
        k = min(self.budget, K)
        if self.name == "chain":
            d = min(self.budget, L)
            return ops.ddtree_select_from_candidates(
                tok[:, :d, :1].contiguous(), lp[:, :d, :1].contiguous(), d, root
            )
        if self.name == "ddtree":
            return ops.ddtree_select_from_candidates(
                tok[..., :k].contiguous(), lp[..., :k].contiguous(), self.budget, root
            )
        if self.name == "caddtree":
            verify = self.table.verify_row(self.budget, r.ctx_len)[None]
            draft = torch.tensor([self.table.draft_cost(r.ctx_len)], dtype=torch.float32)
            return ops.caddtree_select_from_candidates(
                tok[..., :k].contiguous(),
                lp[..., :k].contiguous(),
                self.budget,
                verify,
                draft,
                root,
            )
        if self.name == "d2sd":
            return self._d2sd_tree(r, tok, lp, root)
        if self.taps is not None:
            from ..policies.taps import taps_pool

            width = min(self.taps.width, K)
            pool = taps_pool(
                tok[..., :width].contiguous(),
                lp[..., :width].contiguous(),
                width,
                self.taps.pool_size,
                root,
            )
            log_qc = self.taps.log_qc(pool, tok[..., :width], lp[..., :width], None)
            return ops.taps_select(
                pool.token, pool.parent, pool.size, log_qc, self.budget, max_depth=pool.max_depth
            )
        assert self.prior is not None
        self.prior.sync(stream)
        return ops.presto_select_from_candidates(
            tok[..., :k].contiguous(),
            lp[..., :k].contiguous(),
            self.budget,
            self.prior.context()[None],
            self.prior.keys,
            self.prior.counts,
            order=self.order,
            vocab=vocab,
            lam=self.lam,
            alpha=self.alpha,
            root_token=root,
        )

    def _d2sd_tree(
        self, r: TraceRound, tok: torch.Tensor, lp: torch.Tensor, root: torch.Tensor
    ) -> DraftTree:
        from .. import ops
        from ..policies.d2sd import branch_rows

        if r.branch_token is None or r.branch_logprob is None:
            raise ValueError(
                "d2sd: the trace has no second-pass drafts; record it with "
                "`difftree-rt record-trace --d2sd` (TraceRecorder(d2sd=True))"
            )
        trunk_token = tok[:, :, 0].contiguous()
        trunk_logprob = lp[:, :, 0].contiguous()
        m = int(r.branch_token.shape[0])
        boundary = ops.d2sd_boundaries(trunk_logprob[:, :m].contiguous(), min(self.k, m))
        rows = boundary[0].long()
        branch_token, branch_logprob = branch_rows(
            trunk_token,
            boundary,
            r.branch_token[rows][None],
            r.branch_logprob[rows][None],
            self.alternative,
        )
        return ops.d2sd_select(
            trunk_token, trunk_logprob, boundary, branch_token, branch_logprob, self.budget, root
        )


def _score_round(tree: DraftTree, r: TraceRound) -> tuple[int, bool, float, int, int]:
    """(accepted, covered, Σ p(u), mapped nodes, draft nodes) of one policy tree on a round."""
    rec_child: dict[tuple[int, int], int] = {}
    rec_parent, rec_token = r.parent.tolist(), r.token.tolist()
    for i in range(1, len(rec_token)):
        rec_child[(rec_parent[i], rec_token[i])] = i
    edge = r.edge_prob.tolist()
    choice = r.choice.tolist()
    n = int(tree.num_nodes[0])
    par, tok = tree.parent[0, :n].tolist(), tree.token[0, :n].tolist()
    mapped: list[int | None] = [0] + [None] * (n - 1)
    path_p = [1.0] + [0.0] * (n - 1)
    children: dict[int, dict[int, int]] = {}
    mass, hits = 0.0, 0
    for i in range(1, n):
        children.setdefault(par[i], {})[tok[i]] = i
        mp = mapped[par[i]]
        ri = rec_child.get((mp, tok[i])) if mp is not None else None
        mapped[i] = ri
        if ri is not None:
            hits += 1
            path_p[i] = path_p[par[i]] * edge[ri]
            mass += path_p[i]
    cur, acc, covered = 0, 0, True
    while True:
        rec = mapped[cur]
        if rec is None:
            covered = False
            break
        nxt = children.get(cur, {}).get(choice[rec])
        if nxt is None:
            break
        # Accepted (the choice at cur is known); the choice at nxt may not be: checked above.
        cur, acc = nxt, acc + 1
    return acc, covered, mass, hits, n - 1


def evaluate(
    trace: Trace,
    policies: Sequence[str] | None = None,
    budgets: Sequence[int] = (8, 32, 128),
    cost_table: CostTable | str | None = None,
    options: dict[str, Any] | None = None,
) -> list[EvalRow]:
    """Mean τ (greedy exact, sampling expectation) and tokens per unit cost for every
    (policy, budget) on the identical recorded rounds.

    Args:
        trace: a recorded :class:`Trace`.
        policies: names among chain, ddtree, caddtree, presto, taps, d2sd (default: all;
            d2sd only when the trace holds its second-pass drafts).
        budgets: draft-node budgets (<= the record budget for full coverage).
        cost_table: costs for CaDDTree's rule and the per-cost column (None: the default).
        options: presto's ``lam``, ``order``, ``alpha``; taps' ``scorer`` (None: the
            training-free fallback; a path from ``difftree-rt train-scorer``); d2sd's ``k``
            and ``alternative`` (d2sd needs a trace recorded with ``d2sd=True``).
    """
    table = load_cost_table(cost_table)
    if policies is None:
        policies = [p for p in POLICY_NAMES if p != "d2sd" or trace.meta.get("d2sd")]
    vocab = int(trace.meta.get("vocab", 0)) or 1 + max(max(s) for s in trace.sequences if s)
    rows: list[EvalRow] = []
    for name in policies:
        for budget in budgets:
            sel = _Selector(name, int(budget), table, options or {})
            acc_sum = mass_sum = cost_sum = 0.0
            covered = hits = nodes = 0
            for r in trace.rounds:
                stream = trace.sequences[r.seq][: r.ctx_len + 1]
                tree = sel.tree(r, stream, vocab)
                acc, cov, mass, h, n = _score_round(tree, r)
                acc_sum += acc
                mass_sum += mass
                covered += cov
                hits += h
                nodes += n
                cost_sum += table.round_cost(n, r.ctx_len)
                if name == "d2sd":  # its second drafting pass (k rows in one forward)
                    cost_sum += table.draft_cost(r.ctx_len)
            m = max(len(trace.rounds), 1)
            tau_g, tau_s = 1.0 + acc_sum / m, 1.0 + mass_sum / m
            rows.append(
                EvalRow(
                    policy=name,
                    budget=int(budget),
                    rounds=len(trace.rounds),
                    tau_greedy=tau_g,
                    tau_sampling=tau_s,
                    mean_nodes=nodes / m,
                    round_coverage=covered / m,
                    node_coverage=hits / nodes if nodes else 1.0,
                    tokens_per_cost_greedy=tau_g * m / cost_sum if cost_sum else math.nan,
                    tokens_per_cost_sampling=tau_s * m / cost_sum if cost_sum else math.nan,
                    cost_unit=table.unit,
                )
            )
    return rows


def format_table(rows: Sequence[EvalRow]) -> str:
    """A fixed-width text table of :func:`evaluate`'s rows."""
    unit = rows[0].cost_unit if rows else ""
    head = (
        f"{'policy':<10}{'budget':>7}{'rounds':>7}{'tau_greedy':>11}{'tau_sample':>11}"
        f"{'nodes':>8}{'cov_round':>10}{'cov_node':>9}{'tok/' + unit + ' g':>11}"
        f"{'tok/' + unit + ' s':>11}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r.policy:<10}{r.budget:>7}{r.rounds:>7}{r.tau_greedy:>11.3f}{r.tau_sampling:>11.3f}"
            f"{r.mean_nodes:>8.1f}{r.round_coverage:>10.3f}{r.node_coverage:>9.3f}"
            f"{r.tokens_per_cost_greedy:>11.4f}{r.tokens_per_cost_sampling:>11.4f}"
        )
    return "\n".join(lines)


def rows_as_dicts(rows: Sequence[EvalRow]) -> list[dict[str, Any]]:
    return [asdict(r) for r in rows]
