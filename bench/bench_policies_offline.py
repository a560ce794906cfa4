"""Offline policy comparison on identical rounds: record a trace with a large verified DDTree,
then score chain / ddtree / caddtree / presto / taps x budgets without re-running the target.

    python bench/bench_policies_offline.py --pair reference --threads 1
    python bench/bench_policies_offline.py --pair trained --record-budget 256 --budgets 4 16 64 256

``--pair reference``: the shipped trained pair (assets/reference_pair, or ``$DIFFTREE_RT_PAIR``)
in fp32 on the CPU, its held-out prompts (prompts.json), greedy, stopping at eos; defaults:
record budget 512, 128 new tokens, budgets 16 32 64 128 256, presto λ 0.2. The trace is what
``difftree-rt record-trace --prompt-file <pair>/prompts.json --budget 512 --max-new-tokens 128
--device cpu`` records (``--trace-in`` reuses such a file instead of recording). Besides the
table over all rounds, a TAPS edge scorer is trained on the even-indexed sequences
(``train_scorer``, target embedding features) and every policy plus ``taps-scorer`` is scored
on the odd ones. ``--out`` also writes the JSON there (e.g. assets/reference_pair/
offline_policies.json).

``--pair trained``: the engine tests' tiny Qwen3 target (V=32, random weights) with a DFlash
drafter trained in-process on its greedy continuations (tests/engine/engine_helpers.py);
``--pair random``: a random V=128 target with a random drafter. Both are random-weight models:
the numbers compare policies on the same rounds, they are not a published pair's numbers.

Writes the trace (``--trace``) and a JSON table under bench/results/.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "engine"))

from bench.common import stamp, write_json  # noqa: E402
from difftree_rt.eval import Trace, TraceRecorder, evaluate, format_table  # noqa: E402
from difftree_rt.eval.offline import EvalRow, rows_as_dicts  # noqa: E402
from difftree_rt.policies import load_cost_table  # noqa: E402
from difftree_rt.policies.cost import CostTable  # noqa: E402

# Per-pair defaults of the options left unset on the command line.
DEFAULTS: dict[str, dict[str, Any]] = {
    "reference": {
        "record_budget": 512,
        "budgets": [16, 32, 64, 128, 256],
        "new": 128,
        "lam": [0.2],
        "policies": ["chain", "ddtree", "caddtree", "presto", "taps"],
    },
    "trained": {
        "record_budget": 256,
        "budgets": [4, 16, 64, 256],
        "new": 64,
        "lam": [0.2, 1.0],
        "policies": ["chain", "ddtree", "caddtree", "presto"],
    },
}
DEFAULTS["random"] = DEFAULTS["trained"]


def _record_tiny(args: argparse.Namespace) -> tuple[Trace, list[float]]:
    """Record the random-weight pairs' trace (random prompts)."""
    import engine_helpers as eh

    target, drafter = eh.trained_pair() if args.pair == "trained" else eh.random_pair("qwen3")
    vocab = int(target.config.vocab_size)
    rec = TraceRecorder(target, drafter, budget=args.record_budget, max_length=1024)
    gen = torch.Generator().manual_seed(0)
    taus = []
    for i in range(args.prompts or 8):
        prompt = torch.randint(0, vocab, (1, 3 + 5 * i), generator=gen)
        taus.append(rec.generate(prompt, args.new).stats.tau)
    return rec.trace, taus


def _record_reference(args: argparse.Namespace) -> tuple[Trace, list[float]]:
    """Record the shipped pair's trace exactly as ``difftree-rt record-trace`` does."""
    from difftree_rt.cli.pair import default_pair_dir, encode, load_pair, load_prompts, stop_ids
    from difftree_rt.engine.sampling import SamplingParams

    pair_dir = default_pair_dir()
    pair = load_pair(pair_dir / "target", pair_dir / "drafter", "cpu", "float32")
    prompts = load_prompts(pair_dir / "prompts.json")[: args.prompts]
    ids = [encode(pair, t, "cpu") for t in prompts]
    longest = max(int(x.shape[1]) for x in ids)
    rec = TraceRecorder(
        pair.target,
        pair.drafter,
        budget=args.record_budget,
        max_length=longest + args.new + args.record_budget + 8,
        prob_params=SamplingParams(temperature=1.0),
    )
    rec.trace.meta["pair"] = pair.name
    taus = []
    for i, x in enumerate(ids):
        out = rec.generate(x, args.new, temperature=0.0, seed=i, stop_token_ids=stop_ids(pair))
        taus.append(out.stats.tau)
        print(f"prompt {i}: {out.stats.new_tokens} tokens, {out.stats.rounds} rounds, "
              f"τ = {out.stats.tau:.2f}")  # fmt: skip
    return rec.trace, taus


def _split(trace: Trace, parity: int) -> Trace:
    """The rounds of the sequences with index % 2 == parity (sequence indices kept)."""
    rounds = [r for r in trace.rounds if r.seq % 2 == parity]
    return Trace(rounds, trace.sequences, dict(trace.meta))


def _policy_rows(
    trace: Trace, policies: list[str], budgets: list[int], lams: list[float], table: CostTable
) -> list[EvalRow]:
    """Every policy at every budget (presto once per λ, named ``presto<λ>``)."""
    rows = evaluate(trace, [p for p in policies if p != "presto"], budgets, table)
    if "presto" in policies:
        for lam in lams:
            for r in evaluate(trace, ["presto"], budgets, table, {"lam": lam}):
                r.policy = f"presto{lam:g}"
                rows.append(r)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--pair", choices=["reference", "trained", "random"], default="trained")
    ap.add_argument("--record-budget", type=int, default=None)
    ap.add_argument("--budgets", type=int, nargs="+", default=None)
    ap.add_argument("--prompts", type=int, default=None, help="default: 8 (reference: all)")
    ap.add_argument("--new", type=int, default=None, help="new tokens per prompt")
    ap.add_argument("--lam", type=float, nargs="+", default=None, help="presto λ values")
    ap.add_argument("--policies", nargs="+", default=None)
    ap.add_argument("--cost-table", default=None)
    ap.add_argument("--trace", default="/tmp/difftree_trace.safetensors", help="trace written")
    ap.add_argument("--trace-in", default=None, help="reuse this trace instead of recording")
    ap.add_argument("--scorer-epochs", type=int, default=8, help="taps scorer (reference)")
    ap.add_argument("--scorer-width", type=int, default=64)
    ap.add_argument("--scorer-pool", type=int, default=256)
    ap.add_argument("--no-scorer", action="store_true", help="skip the taps scorer split")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args()
    for key, value in DEFAULTS[args.pair].items():
        if getattr(args, key) is None:
            setattr(args, key, value)

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    taus: list[float] = []
    if args.trace_in:
        trace = Trace.load(args.trace_in)
    else:
        trace, taus = (_record_reference if args.pair == "reference" else _record_tiny)(args)
        trace.save(args.trace)
    t_rec = time.perf_counter() - t0
    vocab = int(trace.meta["vocab"])
    table = load_cost_table(args.cost_table)
    t1 = time.perf_counter()
    live = ""
    if taus:  # not with --trace-in
        live = f"live τ (ddtree@{trace.meta['record_budget']}) = {sum(taus) / len(taus):.3f}; "
    print(f"pair={args.pair} V={vocab} sequences={len(trace.sequences)} "
          f"rounds={len(trace.rounds)} {live}cost unit {table.unit}")  # fmt: skip
    results = _policy_rows(trace, args.policies, args.budgets, args.lam, table)
    print(format_table(results))
    payload: dict[str, Any] = {
        "stamp": stamp("cpu"),
        "args": vars(args),
        "torch_threads": torch.get_num_threads(),
        "trace_meta": trace.meta,
        "sequences": len(trace.sequences),
        "rounds": len(trace.rounds),
        "live_tau": taus,
        "cost_table": table.to_dict(),
        "rows": rows_as_dicts(results),
    }
    if args.pair == "reference" and "taps" in args.policies and not args.no_scorer:
        from transformers import AutoModelForCausalLM

        from difftree_rt.cli.pair import default_pair_dir
        from difftree_rt.policies.taps_scorer import train_scorer

        target = AutoModelForCausalLM.from_pretrained(
            default_pair_dir() / "target", use_safetensors=True
        )
        emb = target.get_input_embeddings().weight.detach().float()
        train, held = _split(trace, 0), _split(trace, 1)
        t2 = time.perf_counter()
        scorer = train_scorer(
            [train],
            width=args.scorer_width,
            pool_size=args.scorer_pool,
            epochs=args.scorer_epochs,
            embedding=emb,
            seed=0,
            log=print,
        )
        t_train = time.perf_counter() - t2
        odd = _policy_rows(held, args.policies, args.budgets, args.lam, table)
        for r in evaluate(held, ["taps"], args.budgets, table, {"scorer": scorer}):
            r.policy = "taps-scorer"
            odd.append(r)
        print(f"odd sequences ({len(held.rounds)} rounds); taps scorer trained on the even "
              f"ones ({len(train.rounds)} rounds, {t_train:.1f} s)")  # fmt: skip
        print(format_table(odd))
        payload["odd_split"] = {
            "scorer": {
                "train_rounds": len(train.rounds),
                "eval_rounds": len(held.rounds),
                "width": args.scorer_width,
                "pool_size": args.scorer_pool,
                "epochs": args.scorer_epochs,
                "token_features": "target input embedding (projected)",
                "train_s": t_train,
            },
            "rows": rows_as_dicts(odd),
        }
    t_eval = time.perf_counter() - t1
    print(f"record {t_rec:.1f} s, evaluate {t_eval:.1f} s")
    payload["seconds"] = {"record": t_rec, "evaluate": t_eval}
    path = write_json(f"bench_policies_offline_{args.pair}", payload)
    print(f"wrote {path}")
    if args.out:
        Path(args.out).write_text(json.dumps(payload, indent=1) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
