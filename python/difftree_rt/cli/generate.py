"""``difftree-rt generate``: speculative decoding of one prompt with any local HF target and
DFlash drafter (streams the text; ``--json`` prints the statistics as JSON)."""

from __future__ import annotations

import argparse
import json
import sys

from .pair import (
    default_pair_dir,
    default_vp_drafter,
    encode,
    incremental_decoder,
    load_pair,
    make_policy_for,
    stop_ids,
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", help="local HF causal LM directory (default: the shipped pair)")
    p.add_argument("--drafter", help="local DFlash drafter directory (default: the shipped pair)")
    p.add_argument(
        "--vp-drafter",
        default=None,
        help="d2sd's second (variable-prefix) drafter (default: the shipped pair's, if any)",
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument("--prompt", default="def fibonacci(n):")
    src.add_argument("--prompt-file")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--policy", default="ddtree", help="ar | chain | ddtree | ...")
    p.add_argument("--budget", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto (cuda when available) | cpu | cuda")
    p.add_argument("--dtype", default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", action="store_true", help="print text + statistics as JSON only")
    p.add_argument(
        "--cuda-graphs",
        choices=("auto", "off"),
        default="auto",
        help="auto: graph mode on CUDA for the policies it captures (see `info`); off: eager",
    )


def run(args: argparse.Namespace) -> int:
    import torch

    from .pair import resolve_device

    args.device = resolve_device(args.device)
    from difftree_rt import SpeculativeDecoder

    if args.threads:
        torch.set_num_threads(args.threads)
    pair_dir = default_pair_dir()
    target = args.target or str(pair_dir / "target")
    drafter = None if args.policy == "ar" else (args.drafter or str(pair_dir / "drafter"))
    vp = default_vp_drafter(args.drafter, args.vp_drafter, pair_dir) if drafter else None
    pair = load_pair(target, drafter, args.device, args.dtype, vp)
    if args.prompt_file:
        with open(args.prompt_file, encoding="utf-8") as f:
            text = f.read()
    else:
        text = args.prompt
    ids = encode(pair, text, args.device)
    policy = make_policy_for(pair, args.policy, args.budget)
    graphs = False if args.cuda_graphs == "off" else None
    dec = SpeculativeDecoder(
        pair.target, pair.drafter, policy, budget=args.budget, cuda_graphs=graphs
    )
    feed = incremental_decoder(pair.tokenizer)
    streamer = None
    if not args.json:
        sys.stdout.write(text)

        def streamer(new: list[int]) -> None:
            sys.stdout.write(feed(new))
            sys.stdout.flush()

    out = dec.generate(
        ids,
        args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        stop_token_ids=stop_ids(pair),
        streamer=streamer,
    )
    s = out.stats
    new_ids = out.sequences[0, ids.shape[1] :].tolist()
    completion = pair.tokenizer.decode(new_ids) if pair.tokenizer is not None else None
    if args.json:
        print(json.dumps({"completion": completion, "tokens": new_ids, **s.as_dict()}, indent=2))
    else:
        print(
            f"\n\n[{args.policy} budget {s.budget}] {s.new_tokens} tokens, τ = {s.tau:.2f}, "
            f"{s.tokens_per_second:.1f} tokens/s, {s.rounds} rounds",
            file=sys.stderr,
        )
    return 0
