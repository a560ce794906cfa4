"""policy="auto" against AR and the fixed (policy, budget) settings, side by side in one run.

The shipped reference pair, its held-out prompts, ``--max-new-tokens`` each, greedy and
sampled (``--temperatures``), at each ``--threads`` setting. Every setting keeps one decoder
for the whole run (auto's measured costs carry over between calls, as in a server), runs once
untimed, then ``--repeats`` timed passes over all prompts, the settings interleaved so machine
drift hits all alike. Reports tokens/s medians with p10/p90 over the passes and the ratios
auto / AR and auto / best fixed setting; ``--random-drafter`` adds the same comparison with a
random-weight drafter (nothing is accepted: auto must stop drafting). Writes
bench/results/bench_auto-*.json.

    python bench/bench_auto.py --threads 0 1 --temperatures 0 0.8 --repeats 3 --random-drafter
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import print_table, stamp, summarize, write_json
from difftree_rt import SpeculativeDecoder
from difftree_rt.cli.pair import (
    encode,
    find_pair_dir,
    load_pair,
    load_prompts,
    make_policy_for,
    stop_ids,
)
from difftree_rt.policies.auto import AutoPolicy

#: (label, policy, budget): the fixed settings of the issue's table, then auto (PRESTO trees,
#: the default) and auto over DDTree trees.
SETTINGS = (
    ("ar", "ar", 0),
    ("chain", "chain", 15),
    ("ddtree@16", "ddtree", 16),
    ("ddtree@64", "ddtree", 64),
    ("presto@16", "presto", 16),
    ("caddtree@64", "caddtree", 64),
    ("auto@64", "auto", 64),
    ("auto-ddtree@64", "auto-ddtree", 64),
)


def run_pass(
    dec: SpeculativeDecoder, prompts: list[torch.Tensor], new: int, temp: float, stop: Any
) -> tuple[int, float, dict[int, int]]:
    """Tokens, seconds and auto's modes of one pass over every prompt."""
    tokens, seconds, modes = 0, 0.0, {}
    for i, ids in enumerate(prompts):
        t0 = time.perf_counter()
        out = dec.generate(ids, new, temperature=temp, seed=i, stop_token_ids=stop)
        seconds += time.perf_counter() - t0
        tokens += out.stats.new_tokens
        for n, c in out.stats.modes.items():
            modes[n] = modes.get(n, 0) + c
    return tokens, seconds, modes


def bench_block(
    pair: Any,
    prompts: list[torch.Tensor],
    args: argparse.Namespace,
    temp: float,
    stop: Any,
    settings: tuple[tuple[str, str, int], ...] = SETTINGS,
) -> list[dict[str, Any]]:
    decs = {}
    for label, policy, budget in settings:
        chosen = (
            AutoPolicy(budget, tree="ddtree")
            if policy == "auto-ddtree"
            else make_policy_for(pair, policy, budget)
        )
        decs[label] = SpeculativeDecoder(
            pair.target, pair.drafter if policy != "ar" else None, chosen, budget=max(1, budget)
        )
        run_pass(decs[label], prompts[:2], 16, temp, stop)  # warm-up (auto: starts learning)
    samples: dict[str, list[float]] = {label: [] for label in decs}
    modes: dict[str, dict[int, int]] = {label: {} for label in decs}
    for _ in range(args.repeats):
        for label, dec in decs.items():
            tokens, seconds, m = run_pass(dec, prompts, args.max_new_tokens, temp, stop)
            samples[label].append(tokens / seconds)
            for n, c in m.items():
                modes[label][n] = modes[label].get(n, 0) + c
    return [
        {"setting": label, "tokens_per_s": summarize(samples[label]), "modes": modes[label]}
        for label in decs
    ]


def ratios(rows: list[dict[str, Any]]) -> dict[str, float]:
    med = {r["setting"]: r["tokens_per_s"]["median"] for r in rows}
    fixed = {k: v for k, v in med.items() if not k.startswith("auto")}
    best = max(fixed, key=lambda k: fixed[k])
    return {
        "auto_vs_ar": med["auto@64"] / med["ar"],
        "auto_ddtree_vs_best_fixed": med["auto-ddtree@64"] / fixed[best],
        "auto_vs_best_fixed": med["auto@64"] / fixed[best],
        "best_fixed": best,  # type: ignore[dict-item]
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, nargs="+", default=[0, 1], help="0: torch's default")
    p.add_argument("--temperatures", type=float, nargs="+", default=[0.0, 0.8])
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--num-prompts", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--random-drafter", action="store_true")
    args = p.parse_args()

    pair_dir = find_pair_dir()
    assert pair_dir is not None, "the shipped reference pair is missing"
    pair = load_pair(pair_dir / "target", pair_dir / "drafter", "cpu", "float32")
    texts = load_prompts(pair_dir / "prompts.json")[: args.num_prompts]
    prompts = [encode(pair, t, "cpu") for t in texts]
    stop = stop_ids(pair)
    default_threads = torch.get_num_threads()
    results = []
    for threads in args.threads:
        torch.set_num_threads(threads or default_threads)
        for temp in args.temperatures:
            rows = bench_block(pair, prompts, args, temp, stop)
            block = {"threads": torch.get_num_threads(), "temperature": temp, "rows": rows}
            block["ratios"] = ratios(rows)
            results.append(block)
            print(f"\nthreads {block['threads']}, temperature {temp}: {block['ratios']}")
            print_table(
                ["setting", "tok/s", "p10", "p90", "modes (N: rounds)"],
                [[r["setting"], r["tokens_per_s"]["median"], r["tokens_per_s"]["p10"],
                  r["tokens_per_s"]["p90"], str(dict(sorted(r["modes"].items())))]
                 for r in rows],
            )  # fmt: skip
            if args.random_drafter:
                rnd = copy.copy(pair)
                rnd.drafter = copy.deepcopy(pair.drafter)
                rnd.drafter.reset_parameters(torch.Generator().manual_seed(0))
                few = tuple(x for x in SETTINGS if x[0] in ("ar", "ddtree@16", "auto@64"))
                rows_r = bench_block(rnd, prompts, args, temp, stop, few)
                med = {r["setting"]: r["tokens_per_s"]["median"] for r in rows_r}
                auto_modes = next(r["modes"] for r in rows_r if r["setting"] == "auto@64")
                block["random_drafter"] = {
                    "rows": rows_r,
                    "auto_vs_ar": med["auto@64"] / med["ar"],
                }
                print(f"random drafter: auto/AR = {med['auto@64'] / med['ar']:.3f} "
                      f"({dict(sorted(auto_modes.items()))})")  # fmt: skip
    path = write_json("bench_auto", {"stamp": stamp("cpu"), "args": vars(args), "results": results})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
