"""Long runs: many speculative rounds per policy with memory watched (RSS and live tensors).

    python bench/long_run.py [--rounds 10000] [--policies ar chain ddtree] [--budget 64]

Loops `generate` calls on one decoder (tiny random Qwen3 target + trained-in-run drafter, CPU
fp32 unless --device cuda) until each policy has run --rounds rounds; samples RSS and the number
of live torch tensors every --every rounds after a warm-up; reports growth. JSON to
bench/results/long_run-*.json.
"""

from __future__ import annotations

import argparse
import gc
import resource
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "engine"))

from engine_helpers import make_drafter, make_target, train_drafter  # noqa: E402

from bench.common import print_table, stamp, write_json  # noqa: E402
from difftree_rt import SpeculativeDecoder  # noqa: E402


def rss_mb() -> float:
    """Current resident set size in MiB (from /proc; ru_maxrss is only the peak)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def live_tensors() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))


def run_policy(policy: str, target, drafter, args) -> dict:  # type: ignore[no-untyped-def]
    dec = SpeculativeDecoder(
        target,
        drafter if policy != "ar" else None,
        policy=policy,
        budget=args.budget,
        max_length=args.prompt_len + args.new + 128,
    )
    gen = torch.Generator().manual_seed(0)
    rounds, calls, samples = 0, 0, []
    warm = None
    t0 = time.perf_counter()
    while rounds < args.rounds:
        prompt = torch.randint(0, target.config.vocab_size, (1, args.prompt_len), generator=gen)
        out = dec.generate(
            prompt.to(args.device),
            max_new_tokens=args.new,
            temperature=0.0 if calls % 2 == 0 else 1.0,
            seed=calls,
        )
        rounds += out.stats.rounds
        calls += 1
        if warm is None and rounds >= args.warmup:
            warm = (rounds, rss_mb(), live_tensors())
            samples.append(warm)
        elif warm is not None and rounds - samples[-1][0] >= args.every:
            samples.append((rounds, rss_mb(), live_tensors()))
    end = (rounds, rss_mb(), live_tensors())
    samples.append(end)
    assert warm is not None
    return {
        "policy": policy,
        "rounds": rounds,
        "generate_calls": calls,
        "seconds": time.perf_counter() - t0,
        "rss_mb_after_warmup": warm[1],
        "rss_mb_end": end[1],
        "rss_growth_mb": end[1] - warm[1],
        "tensors_after_warmup": warm[2],
        "tensors_end": end[2],
        "tensor_growth": end[2] - warm[2],
        "samples": samples,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=10_000)
    ap.add_argument("--policies", nargs="+", default=["ar", "chain", "ddtree"])
    ap.add_argument("--budget", type=int, default=64)
    ap.add_argument("--prompt-len", type=int, default=12)
    ap.add_argument("--new", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=300)
    ap.add_argument("--every", type=int, default=1000)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    with torch.random.fork_rng():
        target = make_target("qwen3", vocab=32, seed=1).to(args.device)
        drafter = make_drafter(target, seed=1)
        train_drafter(target, drafter, steps=400, num_seqs=128, lr=1e-2)
    results = [run_policy(p, target, drafter, args) for p in args.policies]
    print_table(
        [
            "policy",
            "rounds",
            "calls",
            "s",
            "RSS MiB (warm)",
            "RSS MiB (end)",
            "tensors (warm)",
            "tensors (end)",
        ],
        [
            [
                r["policy"],
                r["rounds"],
                r["generate_calls"],
                r["seconds"],
                r["rss_mb_after_warmup"],
                r["rss_mb_end"],
                r["tensors_after_warmup"],
                r["tensors_end"],
            ]
            for r in results
        ],
    )
    path = write_json(
        "long_run",
        {
            "bench": "long_run",
            "config": vars(args) | {"out": str(args.out)},
            "stamp": stamp(args.device),
            "results": results,
        },
        args.out,
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
