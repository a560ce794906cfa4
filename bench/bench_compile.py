"""Compiled model forwards (issue 19) against uncompiled ones, side by side in one run (CPU).

The shipped reference pair, its held-out prompts, ``--max-new-tokens`` each, greedy, at
``--threads`` threads. Settings: AR, ddtree@16 and presto@16, each in graph mode (static
shapes; uncaptured on the CPU) compiled (``compile=True``, inductor) and not, plus the default
eager launcher as the reference the user gets without flags. Every decoder runs one untimed
pass first (the compiled ones compile there: its ``stats.compile_time`` is reported as the
one-time compile seconds), then ``--repeats`` timed passes over all prompts, the settings
interleaved so machine drift hits all alike. Reports tokens/s medians with p10/p90 over the
passes, the compiled / uncompiled ratio per setting, and checks compiled == uncompiled tokens.
Inductor's on-disk cache goes to a fresh directory unless ``--warm-cache``, so the compile
seconds are cold ones (ddtree@16 and presto@16 compile the same shapes: presto's come from the
cache). Also times the target forward alone (a step and a 17-row verify at span 256)
uncompiled and compiled against the weight-read floor (its matmuls alone). Writes
bench/results/issue19-compile-cpu/bench_compile-*.json.

    python bench/bench_compile.py --threads 1 --repeats 5
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from bench.common import RESULTS, print_table, stamp, summarize, time_fn, write_json
from difftree_rt import SpeculativeDecoder
from difftree_rt.cli.pair import encode, find_pair_dir, load_pair, load_prompts, stop_ids

#: (label, policy, budget).
SETTINGS = (("ar", "ar", 1), ("ddtree@16", "ddtree", 16), ("presto@16", "presto", 16))
#: (suffix, decoder keywords): the launchers compared per setting.
MODES = (
    ("eager", {}),
    ("graph", {"cuda_graphs": True}),
    ("graph+compile", {"compile": True}),
)


def run_pass(
    dec: SpeculativeDecoder, prompts: list[torch.Tensor], new: int, stop: Any
) -> tuple[int, float, float, list[torch.Tensor]]:
    """Tokens, seconds, compile seconds and the outputs of one greedy pass."""
    tokens, seconds, compiling, outs = 0, 0.0, 0.0, []
    for ids in prompts:
        t0 = time.perf_counter()
        out = dec.generate(ids, new, stop_token_ids=stop)
        seconds += time.perf_counter() - t0
        tokens += out.stats.new_tokens
        compiling += out.stats.compile_time
        outs.append(out.sequences)
    return tokens, seconds, compiling, outs


def forward_times(pair: Any, span: int, repeats: int) -> list[dict[str, Any]]:
    """The target's forward alone on a fixed span (as graph mode runs it), uncompiled and
    compiled, for a step (N = 1) and a 17-node verify (ddtree@16's tree, causal: the shape is
    what matters), against the weight-read floor: every matmul of a one-row step (the target's
    linear layers and LM head) timed alone."""
    from difftree_rt.models.compiled import CompileState, ForwardCompiler
    from difftree_rt.models.target import TargetAdapter

    model = pair.target
    rows = []
    for n in (1, 17):
        ad = TargetAdapter(model, 2 * span, validate=False, max_forward_rows=n)
        ad.prefill(torch.randint(0, model.config.vocab_size, (1, span // 2)))
        ad.cache.set_fixed_span(span)
        ids = torch.zeros(1, n, dtype=torch.long)
        depth = torch.arange(n)[None]
        eager = time_fn(lambda: ad.verify(ids, depth, None, None), repeats=repeats)
        ad.compiler = ForwardCompiler(CompileState())
        t0 = time.perf_counter()
        ad.verify(ids, depth, None, None)
        compile_s = time.perf_counter() - t0
        compiled = time_fn(lambda: ad.verify(ids, depth, None, None), repeats=repeats)
        rows.append({"rows": n, "eager_us": eager, "compiled_us": compiled,
                     "compile_s": compile_s})  # fmt: skip
    weights = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
    inputs = [torch.randn(1, w.shape[1]) for w in weights]

    def matmuls() -> None:
        for x, w in zip(inputs, weights, strict=True):
            torch.nn.functional.linear(x, w)

    floor = time_fn(matmuls, repeats=repeats)
    mb = sum(w.numel() * w.element_size() for w in weights) / 1e6
    rows.append({"rows": "floor", "matmuls_us": floor, "weight_mb": mb})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--num-prompts", type=int, default=8)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--mode", default="default", help="inductor mode (compile_mode)")
    p.add_argument("--warm-cache", action="store_true", help="keep inductor's on-disk cache")
    args = p.parse_args()
    if not args.warm_cache:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor-cold-")

    torch.set_num_threads(args.threads)
    pair_dir = find_pair_dir()
    assert pair_dir is not None, "the shipped reference pair is missing"
    pair = load_pair(pair_dir / "target", pair_dir / "drafter", "cpu", "float32")
    texts = load_prompts(pair_dir / "prompts.json")[: args.num_prompts]
    prompts = [encode(pair, t, "cpu") for t in texts]
    stop = stop_ids(pair)

    decs: dict[str, SpeculativeDecoder] = {}
    compile_s: dict[str, float] = {}
    first: dict[str, list[torch.Tensor]] = {}
    for label, policy, budget in SETTINGS:
        for suffix, kw in MODES:
            name = f"{label} {suffix}"
            extra = {"compile_mode": args.mode} if kw.get("compile") else {}
            drafter = pair.drafter if policy != "ar" else None
            dec = SpeculativeDecoder(pair.target, drafter, policy, budget, **kw, **extra)
            t0 = time.perf_counter()
            _, _, compile_s[name], first[name] = run_pass(dec, prompts, args.max_new_tokens, stop)
            print(f"{name}: untimed pass {time.perf_counter() - t0:.1f} s "
                  f"(compile {compile_s[name]:.1f} s)", flush=True)  # fmt: skip
            decs[name] = dec
    same = {
        label: all(
            torch.equal(a, b)
            for a, b in zip(first[f"{label} graph"], first[f"{label} graph+compile"], strict=True)
        )
        for label, _, _ in SETTINGS
    }
    # After the decoders' first passes, so their compile seconds are the cold ones (these
    # forwards' graphs then come from inductor's cache, as a second process would get them).
    with torch.inference_mode():
        fwd = forward_times(pair, 256, 200)
    for r in fwd[:-1]:
        print(f"target forward, {r['rows']} row(s), span 256: uncompiled "
              f"{r['eager_us']['median']:.0f} us, compiled {r['compiled_us']['median']:.0f} us "
              f"(p10-p90 {r['compiled_us']['p10']:.0f}-{r['compiled_us']['p90']:.0f})")  # fmt: skip
    print(f"weight-read floor (every matmul of a one-row step alone, {fwd[-1]['weight_mb']:.1f} "
          f"MB): {fwd[-1]['matmuls_us']['median']:.0f} us", flush=True)  # fmt: skip

    samples: dict[str, list[float]] = {name: [] for name in decs}
    for _ in range(args.repeats):
        for name, dec in decs.items():
            tokens, seconds, _, _ = run_pass(dec, prompts, args.max_new_tokens, stop)
            samples[name].append(tokens / seconds)
    rows = [
        {"setting": name, "tokens_per_s": summarize(samples[name]), "compile_s": compile_s[name]}
        for name in decs
    ]
    med = {r["setting"]: r["tokens_per_s"]["median"] for r in rows}
    ratios = {
        label: {
            "compiled_vs_graph": med[f"{label} graph+compile"] / med[f"{label} graph"],
            "compiled_vs_eager": med[f"{label} graph+compile"] / med[f"{label} eager"],
        }
        for label, _, _ in SETTINGS
    }
    print(f"\nthreads {torch.get_num_threads()}, greedy, {args.max_new_tokens} new tokens x "
          f"{len(prompts)} prompts; compiled == uncompiled tokens: {same}")  # fmt: skip
    print_table(
        ["setting", "tok/s", "p10", "p90", "compile s"],
        [[r["setting"], r["tokens_per_s"]["median"], r["tokens_per_s"]["p10"],
          r["tokens_per_s"]["p90"], r["compile_s"]] for r in rows],
    )  # fmt: skip
    for label, r in ratios.items():
        print(f"{label}: compiled / graph {r['compiled_vs_graph']:.2f}x, "
              f"compiled / eager {r['compiled_vs_eager']:.2f}x")  # fmt: skip
    payload = {
        "stamp": stamp("cpu"),
        "args": vars(args),
        "threads": torch.get_num_threads(),
        "rows": rows,
        "ratios": ratios,
        "compiled_equals_uncompiled": same,
        "target_forward": fwd,
    }
    path = write_json("bench_compile", payload, RESULTS / "issue19-compile-cpu")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
