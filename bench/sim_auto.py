"""The auto controller replayed on recorded acceptance: what its choices would give.

Greedy decoding makes the output a fixed sequence, so "how many draft tokens would a round of
tree policy P at budget b accept if it drafted at position t" is a function of t alone.
``collect`` measures it at every position of each held-out prompt's 128-token greedy output
(one first round of a fresh decoder from each prefix) for the shipped reference pair and writes
it as JSON; ``simulate`` replays :class:`~difftree_rt.engine.auto.AutoController` (the real
class, as graph mode drives it: no per-round surrogate) on those sequences with synthetic round
costs (a target step costs 1, a drafted round of N nodes ``--draft-cost + --node-cost * N``),
next to every fixed setting and a random drafter (nothing accepted). Rates are tokens per unit
of step cost (AR = 1).

    python bench/sim_auto.py collect --settings presto:4 presto:8 presto:16 presto:32 presto:64 \\
        ddtree:16 --num-prompts 4 --out bench/results/issue18-auto-cpu/acceptance.json
    python bench/sim_auto.py simulate bench/results/issue18-auto-cpu/acceptance.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from difftree_rt import SpeculativeDecoder
from difftree_rt.engine.auto import AutoController, AutoSettings


def collect(args: argparse.Namespace) -> None:
    from difftree_rt.cli.pair import encode, find_pair_dir, load_pair, load_prompts

    torch.set_num_threads(1)
    pair_dir = find_pair_dir()
    assert pair_dir is not None, "the shipped reference pair is missing"
    pair = load_pair(pair_dir / "target", pair_dir / "drafter", "cpu", "float32")
    prompts = [encode(pair, t, "cpu") for t in load_prompts(pair_dir / "prompts.json")]
    settings = [s.split(":") for s in args.settings]
    decs = {
        f"{p}:{b}": SpeculativeDecoder(pair.target, pair.drafter, p, budget=int(b))
        for p, b in settings
    }
    depth = pair.drafter.block_size  # room for a full-depth path in the first round
    rows = []
    for i, ids in enumerate(prompts[: args.num_prompts]):
        seq = SpeculativeDecoder(pair.target, None, "ar").generate(ids, args.new).sequences
        row: dict[str, Any] = {"prompt": i, "prompt_len": ids.shape[1]}
        for key, dec in decs.items():
            acc = []
            for t in range(ids.shape[1], seq.shape[1] - depth):
                out = dec.generate(seq[:, :t], depth)
                acc.append(out.stats.accepted_lengths[0] if out.stats.accepted_lengths else 0)
            row[key] = acc
        rows.append(row)
        print(f"prompt {i}: {len(row[next(iter(decs))])} positions", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"settings": list(decs), "rows": rows}))


def _cost(nodes: int, args: argparse.Namespace) -> float:
    return 1.0 if nodes == 1 else args.draft_cost + args.node_cost * nodes


def _fixed(rows: list[dict[str, Any]], key: str, nodes: int, args: argparse.Namespace) -> float:
    tokens = cost = 0.0
    for row in rows:
        acc, t = row[key], 0
        while t < len(acc):
            tokens += acc[t] + 1
            cost += _cost(nodes, args)
            t += acc[t] + 1
    return tokens / cost


def _auto(
    rows: list[dict[str, Any]],
    tree: str,
    budgets: list[int],
    settings: AutoSettings,
    args: argparse.Namespace,
    random: bool = False,
) -> tuple[float, dict[int, int]]:
    ctrl = AutoController([b + 1 for b in budgets], settings)
    tokens = cost = 0.0
    modes: dict[int, int] = {}
    for row in rows:
        ctrl.restart_probes()  # as the runners do at every call
        t, length = 0, len(row[f"{tree}:{budgets[0]}"])
        while t < length:
            context = row["prompt_len"] + t
            nodes = 1
            if ctrl.choose_draft(context):
                nodes = ctrl.choose_nodes(context, [None] * len(budgets))
            acc = 0 if nodes == 1 or random else row[f"{tree}:{nodes - 1}"][t]
            ctrl.observe(nodes, context, _cost(nodes, args) * 1e-3, acc)
            tokens += acc + 1
            cost += _cost(nodes, args)
            t += acc + 1
            modes[nodes] = modes.get(nodes, 0) + 1
    return tokens / cost, modes


def simulate(args: argparse.Namespace) -> None:
    data = json.loads(Path(args.data).read_text())
    rows = data["rows"]
    trees: dict[str, list[int]] = {}
    for key in data["settings"]:
        tree, budget = key.split(":")
        trees.setdefault(tree, []).append(int(budget))
    print(f"costs: step 1, drafted N nodes {args.draft_cost} + {args.node_cost} N")
    for tree, budgets in trees.items():
        budgets.sort()
        fixed = {b: _fixed(rows, f"{tree}:{b}", b + 1, args) for b in budgets}
        best = max(fixed.values())
        print(f"\n{tree}: fixed " + ", ".join(f"@{b} {r:.3f}" for b, r in fixed.items()))
        grid = [AutoSettings(), AutoSettings(alpha=0.25, probe_every=8)]
        for s in grid:
            rate, modes = _auto(rows, tree, budgets, s, args)
            rnd, _ = _auto(rows, tree, budgets, s, args, random=True)
            print(
                f"  auto alpha={s.alpha} probe_every={s.probe_every}: {rate:.3f} "
                f"({rate / best:.2f} of the best fixed), random drafter {rnd:.3f}, modes {modes}"
            )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("collect")
    c.add_argument("--settings", nargs="+", default=["presto:16", "ddtree:16"])
    c.add_argument("--num-prompts", type=int, default=4)
    c.add_argument("--new", type=int, default=128)
    c.add_argument("--out", required=True)
    s = sub.add_parser("simulate")
    s.add_argument("data")
    s.add_argument("--draft-cost", type=float, default=1.75)
    s.add_argument("--node-cost", type=float, default=0.02)
    args = p.parse_args()
    collect(args) if args.cmd == "collect" else simulate(args)


if __name__ == "__main__":
    main()
