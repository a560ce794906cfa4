"""The TAPS edge scorer (ALGORITHMS.md §6): a small MLP giving ``log q_cond(child | parent)``
for every pool edge from draft-time features, trained on recorded traces.

Features of an edge u -> c at depth d (c's row in the pool):
  child and parent token embeddings (a learned projection of the target's input embedding when
  given, else a learned hashed table), a depth embedding, the child's draft log-prob, the
  depth's entropy (top-K marginals + the tail as one outcome), top-1/top-2 margin, top-K mass,
  d / L, the child's cumulative log-prob and the mean cumulative log-prob of the pool's nodes
  at depth d. Each parent with pool children also gets an "other" pseudo-edge (child token
  features zero, log-prob = log tail_d, flag 1); a softmax per parent over {pool children,
  other} gives q_cond. The drafter hidden state is not used (not recorded in traces).

Training (:func:`train_scorer`): for each recorded round the pool is rebuilt from the recorded
candidates and mapped onto the recorded verified tree by path; the target conditional of a
child given its parent is read from the parent's recorded top-k (or the child's recorded edge
probability), "other" gets the rest. Loss = per-parent KL(target || predicted) + 0.5 x BCE of
the predicted reach exp(Σ log q_cond) against the target reach along the path, averaged.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..safe_files import read_tensor_file, write_tensor_file
from .taps import TapsPool, taps_pool

__all__ = ["EdgeScorer", "edge_features", "train_scorer"]

_FORMAT = "difftree_rt.taps_scorer/2"
_REMEDY = "Train it again with `difftree-rt train-scorer TRACE --out SCORER.safetensors`."
NUM_SCALARS = 9  # lp, entropy, margin, mass, d/L, cum, depth-mean cum, is_other, log #children


def _depth_stats(lp: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per depth of ``[L, K]`` log-probs: entropy, top1-top2 margin, top-K mass, log tail."""
    p = lp.double().exp()
    mass = p.sum(-1).clamp(max=1.0)
    tail = (1.0 - mass).clamp(min=0.0)
    ent = -(p * lp.double()).sum(-1) - torch.where(tail > 0, tail * tail.log(), 0.0)
    margin = lp[:, 0] - (lp[:, 1] if lp.shape[1] > 1 else torch.full_like(lp[:, 0], -1e4))
    log_tail = tail.clamp(min=1e-30).log()
    return ent.float(), margin.float().clamp(max=1e4), mass.float(), log_tail.float()


def edge_features(pool: TapsPool, cand_logprob: Tensor, b: int) -> dict[str, Tensor]:
    """Features of request b's pool edges followed by one "other" edge per parent with
    children. Returns tensors over E edges: ``scalars [E, 9]``, ``child_tok``, ``parent_tok``
    (-1 = none), ``depth`` (1-based), ``group`` (the parent's pool row), ``row`` (the child's
    pool row, -1 for other)."""
    n = int(pool.size[b])
    L = pool.max_depth
    lp = cand_logprob[b].float()
    ent, margin, mass, log_tail = _depth_stats(lp)
    par = pool.parent[b, 1:n]
    dep = pool.depth[b, 1:n]
    clp = lp[dep - 1, pool.rank[b, 1:n]]
    cum = pool.score[b, 1:n]
    dmean = torch.zeros(L + 1)
    if n > 1:
        dmean.index_add_(0, dep, cum)
        dmean = dmean / torch.bincount(dep, minlength=L + 1).clamp(min=1)
    nchild = torch.bincount(par, minlength=n).float()
    parents = torch.unique(par)  # sorted pool rows that have children
    pdep = pool.depth[b, parents] + 1
    d = torch.cat([dep, pdep])
    is_other = torch.cat([torch.zeros(n - 1), torch.ones(len(parents))])
    lpe = torch.cat([clp, log_tail[pdep - 1]])
    cume = torch.cat([cum, pool.score[b, parents] + log_tail[pdep - 1]])
    group = torch.cat([par, parents])
    scalars = torch.stack(
        [
            lpe / 10,
            ent[d - 1],
            margin[d - 1].clamp(max=20) / 10,
            mass[d - 1],
            d.float() / max(L, 1),
            cume.clamp(min=-1e3) / 10,
            dmean[d].clamp(min=-1e3) / 10,
            is_other,
            nchild[group].log1p(),
        ],
        dim=1,
    )
    return {
        "scalars": scalars.float(),
        "child_tok": torch.cat([pool.token[b, 1:n], torch.full((len(parents),), -1)]),
        "parent_tok": pool.token[b, group],
        "depth": d,
        "group": group,
        "row": torch.cat([torch.arange(1, n), torch.full((len(parents),), -1)]),
    }


def _group_log_softmax(logit: Tensor, group: Tensor, n: int) -> Tensor:
    m = torch.full((n,), -math.inf).scatter_reduce(0, group, logit.detach(), "amax")
    z = torch.zeros(n).index_add(0, group, (logit - m[group]).exp())
    return logit - m[group] - z[group].log()


class EdgeScorer(nn.Module):
    """The edge MLP (≈1e5 parameters at the defaults)."""

    def __init__(
        self,
        vocab: int,
        *,
        embedding: Tensor | None = None,
        tok_dim: int = 16,
        hidden: int = 256,
        max_depth: int = 64,
        buckets: int = 4096,
    ) -> None:
        super().__init__()
        self.config = {
            "vocab": vocab,
            "tok_dim": tok_dim,
            "hidden": hidden,
            "max_depth": max_depth,
            "buckets": buckets,
        }
        self.embedding = embedding  # [V, H] target input embedding (frozen), or None
        if embedding is not None:
            self.proj = nn.Linear(embedding.shape[1], tok_dim, bias=False)
        self.tok = nn.Embedding(min(vocab, buckets) + 1, tok_dim)  # last row: "no token"
        self.dep = nn.Embedding(max_depth + 1, 8)
        self.mlp = nn.Sequential(
            nn.Linear(2 * tok_dim + 8 + NUM_SCALARS, hidden),
            nn.GELU(),
            nn.Linear(hidden, hidden),
            nn.GELU(),
            nn.Linear(hidden, 1),
        )
        self.table: Tensor | None = None  # projected embedding [V, tok_dim] after load

    def _tok(self, t: Tensor) -> Tensor:
        none = t < 0
        if self.table is not None:
            e = self.table[t.clamp(min=0)].float()
        elif self.embedding is not None:
            e = self.proj(self.embedding[t.clamp(min=0)].float())
        else:
            nb = self.tok.num_embeddings - 1
            e = self.tok(torch.where(none, nb, t % nb))
        return torch.where(none[:, None], 0.0, e)

    def edge_log_qc(self, f: dict[str, Tensor], n: int) -> Tensor:
        """log q_cond over the E edges of :func:`edge_features` (other edges included)."""
        x = torch.cat(
            [
                self._tok(f["child_tok"]),
                self._tok(f["parent_tok"]),
                self.dep(f["depth"].clamp(max=self.config["max_depth"])),
                f["scalars"],
            ],
            dim=1,
        )
        return _group_log_softmax(self.mlp(x)[:, 0], f["group"], n)

    @torch.no_grad()
    def log_qc(self, pool: TapsPool, cand_token: Tensor, cand_logprob: Tensor, inputs: Any = None):
        """``[B, P1]`` float32 log q_cond for the pool (the TapsPolicy scorer interface)."""
        out = torch.zeros(pool.token.shape, dtype=torch.float32)
        for b in range(pool.token.shape[0]):
            n = int(pool.size[b])
            if n <= 1:
                continue
            f = edge_features(pool, cand_logprob, b)
            lq = self.edge_log_qc(f, n)
            real = f["row"] >= 0
            out[b, f["row"][real]] = lq[real].float().clamp(min=-1e4, max=0.0)
        return out

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the scorer as one safetensors file (config as JSON; the projected embedding
        table instead of the embedding, when there is one)."""
        state = {k: v for k, v in self.state_dict().items() if not k.startswith("proj.")}
        table = None
        if self.embedding is not None:
            with torch.no_grad():
                table = self.proj(self.embedding.float()).half()
        elif self.table is not None:
            table = self.table
        write_tensor_file(path, _FORMAT, {"config": self.config, "state": state, "table": table})

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> EdgeScorer:
        """Read a scorer written by :meth:`save`; ValueError naming ``path`` for anything else
        (a pickle file is refused unread)."""
        blob = read_tensor_file(path, _FORMAT, _REMEDY)
        try:
            _check_config(blob["config"], blob["state"])
            m = cls(**blob["config"])
            m.load_state_dict(blob["state"])
        except (KeyError, TypeError, RuntimeError) as e:
            raise ValueError(f"{path}: malformed TAPS scorer ({e}). {_REMEDY}") from None
        m.table = blob["table"]
        return m.eval()


def _param_shapes(config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """The weight shapes :class:`EdgeScorer` builds from ``config`` (biases follow them)."""
    tok_dim, hidden = config["tok_dim"], config["hidden"]
    return {
        "tok.weight": (min(config["vocab"], config["buckets"]) + 1, tok_dim),
        "dep.weight": (config["max_depth"] + 1, 8),
        "mlp.0.weight": (hidden, 2 * tok_dim + 8 + NUM_SCALARS),
        "mlp.2.weight": (hidden, hidden),
        "mlp.4.weight": (1, hidden),
    }


def _check_config(config: Any, state: Any) -> None:
    """Refuse a scorer file whose config disagrees with its own tensors, before any module is
    built: the config alone would size the allocation (a tampered ``hidden`` of 1e9 asks for
    exabytes)."""
    keys = ("vocab", "tok_dim", "hidden", "max_depth", "buckets")
    if not isinstance(config, dict) or set(config) != set(keys):
        raise TypeError(f"config must have exactly the fields {keys}")
    for k in keys:
        v = config[k]
        if isinstance(v, bool) or not isinstance(v, int) or v < (0 if k == "max_depth" else 1):
            raise TypeError(f"config field {k!r} must be a positive int, got {v!r}")
    if not isinstance(state, dict):
        raise TypeError("state must be a tensor dict")
    for name, shape in _param_shapes(config).items():
        got = state.get(name)
        if not isinstance(got, Tensor) or tuple(got.shape) != shape:
            have = None if not isinstance(got, Tensor) else tuple(got.shape)
            raise TypeError(f"{name} has shape {have}, the config implies {shape}")


def _targets(pool: TapsPool, r: Any, f: dict[str, Tensor]) -> tuple[Tensor, Tensor] | None:
    """Target q_cond per edge (other edges included) and a mask of edges whose parent maps
    onto the recorded tree."""
    n = int(pool.size[0])
    rec_children: dict[tuple[int, int], int] = {}
    for i in range(1, len(r.token)):
        rec_children[(int(r.parent[i]), int(r.token[i]))] = i
    rec_of = [-1] * n
    rec_of[0] = 0
    for i in range(1, n):
        p = rec_of[int(pool.parent[0, i])]
        if p >= 0:
            rec_of[i] = rec_children.get((p, int(pool.token[0, i])), -1)
    E = len(f["group"])
    t = torch.zeros(E)
    ok = torch.zeros(E, dtype=torch.bool)
    tot = torch.zeros(n)
    topk = {}
    for e in range(E):
        g, row = int(f["group"][e]), int(f["row"][e])
        ru = rec_of[g]
        if ru < 0 or row < 0:
            continue
        if ru not in topk:
            topk[ru] = dict(zip(r.topk_token[ru].tolist(), r.topk_prob[ru].tolist()))
        tok = int(pool.token[0, row])
        rc = rec_of[row]
        t[e] = float(r.edge_prob[rc]) if rc >= 0 else topk[ru].get(tok, 0.0)
        ok[e] = True
        tot[g] += t[e]
    for e in range(E):
        g = int(f["group"][e])
        if int(f["row"][e]) < 0 and rec_of[g] >= 0:
            t[e] = max(0.0, 1.0 - float(tot[g]))
            ok[e] = True
    if not bool(ok.any()):
        return None
    return t, ok


def _ancestors(parent: Tensor) -> Tensor:
    n = len(parent)
    a = torch.zeros(n, n)
    for i in range(1, n):
        a[i] = a[int(parent[i])]
        a[i, i] = 1.0
    return a


def train_scorer(
    traces: Sequence[Any],
    *,
    width: int = 64,
    pool_size: int = 128,
    epochs: int = 5,
    lr: float = 2e-3,
    embedding: Tensor | None = None,
    seed: int = 0,
    log: Any = None,
) -> EdgeScorer:
    """Fit an :class:`EdgeScorer` on recorded :class:`~difftree_rt.eval.Trace` objects."""
    torch.manual_seed(seed)
    vocab = int(traces[0].meta["vocab"])
    max_depth = max(int(t.meta.get("max_depth", 16)) for t in traces)
    model = EdgeScorer(vocab, embedding=embedding, max_depth=max(max_depth, 1))
    samples = []
    for trace in traces:
        for r in trace.rounds:
            tok, lp = r.cand_token[None].long(), r.cand_logprob[None].float()
            root = torch.tensor([int(r.token[0])])
            pool = taps_pool(tok, lp, width, pool_size, root)
            if int(pool.size[0]) <= 1:
                continue
            f = edge_features(pool, lp, 0)
            tg = _targets(pool, r, f)
            if tg is not None:
                samples.append((pool, f, *tg))
    if not samples:
        raise ValueError("train_scorer: no usable rounds in the traces")
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for epoch in range(epochs):
        total = 0.0
        for i in torch.randperm(len(samples)).tolist():
            pool, f, t, ok = samples[i]
            n = int(pool.size[0])
            lq = model.edge_log_qc(f, n)
            kl = (t * (t.clamp(min=1e-12).log() - lq))[ok].sum() / max(1, len(set(
                f["group"][ok].tolist())))  # fmt: skip
            # reach along the pool paths, predicted vs target (edges of mapped parents only)
            real = (f["row"] >= 0) & ok
            rows = f["row"][real]
            lp_edge = torch.zeros(n).index_put((rows,), lq[real])
            lt_edge = torch.zeros(n).index_put((rows,), t[real].clamp(min=1e-12).log())
            anc = _ancestors(pool.parent[0, :n])  # [n, n] ancestor-or-self (root row 0)
            log_pred, log_true = anc @ lp_edge, anc @ lt_edge
            pr = log_pred[rows].exp().clamp(1e-6, 1 - 1e-6)
            bce = nn.functional.binary_cross_entropy(pr, log_true[rows].exp().clamp(0, 1))
            loss = kl + 0.5 * bce
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach())
        if log is not None:
            log(f"epoch {epoch + 1}/{epochs}: loss {total / len(samples):.4f}")
    return model.eval()
