"""``difftree-rt demo``: DDTree selection on drafter-like logits of realistic shape.

Until the end-to-end demo with a trained pair exists, this shows what the core does each round:
per-depth top-K, the exact best-first tree, a walk and a KV commit, with timings.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from difftree_rt import ops
from difftree_rt.tree import DraftTree


def drafter_like_logits(B: int, L: int, V: int, seed: int, device: str = "cpu") -> torch.Tensor:
    """Peaked logits whose confidence decays with depth, like a block drafter's. ``[B, L, V]``."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((B, L, V), generator=gen)
    top = torch.randint(0, V, (B, L, 8), generator=gen)
    for d in range(L):
        # A few strong candidates per depth, weaker as the block goes on.
        boost = torch.linspace(9.0, 4.0, 8) * (1.0 - 0.03 * d)
        x[:, d].scatter_add_(1, top[:, d], boost.expand(B, 8).contiguous())
    return x.to(device)


def _time(fn: Callable[[], object], repeats: int, device: str) -> list[float]:
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    fn()
    sync()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        out.append((time.perf_counter() - t0) * 1e6)
    return out


def render_tree(tree: DraftTree, b: int = 0, max_nodes: int = 24) -> str:
    """ASCII rendering of the first ``max_nodes`` nodes of request ``b`` (best-first ids)."""
    n = min(int(tree.num_nodes[b]), max_nodes)
    lines = []

    def visit(i: int, prefix: str, last: bool) -> None:
        tok = int(tree.token[b, i])
        label = "root" if i == 0 else f"#{i} tok={tok} logq={float(tree.score[b, i]):.2f}"
        lines.append(prefix + ("" if i == 0 else ("└─ " if last else "├─ ")) + label)
        kids = []
        c = int(tree.first_child[b, i])
        while c != -1 and c < n:
            kids.append(c)
            c = int(tree.next_sibling[b, c])
        child_prefix = prefix + ("" if i == 0 else ("   " if last else "│  "))
        for k, c in enumerate(kids):
            visit(c, child_prefix, k == len(kids) - 1)

    visit(0, "", True)
    if int(tree.num_nodes[b]) > n:
        lines.append(f"... ({int(tree.num_nodes[b]) - n} more nodes)")
    return "\n".join(lines)


def run_demo(
    vocab: int, depth: int, budgets: list[int], device: str, repeats: int, seed: int
) -> int:
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        tqdm = None

    logits = drafter_like_logits(1, depth, vocab, seed, device)
    print(f"draft logits [B=1, L={depth}, V={vocab}] on {device}\n")
    tree = ops.ddtree_select(logits, 16, root_token=torch.tensor([0], device=device))
    print("DDTree, budget 16 (best-first node ids):")
    print(render_tree(tree.to("cpu")))
    print()

    rows = []
    it = tqdm(budgets, desc="timing budgets", leave=False) if tqdm else budgets
    for budget in it:
        k = min(budget, vocab)
        tok, lp = ops.topk_logprobs(logits, k)
        t_topk = _time(lambda k=k: ops.topk_logprobs(logits, k), repeats, device)
        t_sel = _time(
            lambda b=budget: ops.ddtree_select_from_candidates(tok, lp, b), repeats, device
        )
        tree = ops.ddtree_select_from_candidates(tok, lp, budget)
        expected_accept = float(tree.score[0, 1 : int(tree.num_nodes[0])].double().exp().sum())
        # The "target" agrees with the drafter's top-1 everywhere: the walk runs to full depth.
        choice = torch.zeros((1, tree.capacity), dtype=torch.int64, device=device)
        fc = tree.first_child.long()
        has_child = fc >= 0
        choice[has_child] = tree.token.long().gather(1, fc.clamp(min=0))[has_child]
        t_walk = _time(lambda t=tree, c=choice: ops.tree_walk(t, c), repeats, device)
        rows.append(
            (
                budget,
                statistics.median(t_topk),
                statistics.median(t_sel),
                statistics.median(t_walk),
                expected_accept,
                int(tree.depth.max()),
            )
        )

    print(
        f"{'budget':>6} {'topk µs':>10} {'select µs':>10} {'walk µs':>9} "
        f"{'E[accepted]':>11} {'max depth':>9}"
    )
    for budget, a, s, w, e, d in rows:
        print(f"{budget:>6} {a:>10.1f} {s:>10.1f} {w:>9.1f} {e:>11.2f} {d:>9}")
    print(
        "\nE[accepted] = Σ over tree nodes of q(u), the draft-model expectation DDTree maximises."
    )
    return 0
