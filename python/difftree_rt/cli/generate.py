"""``difftree-rt generate``: speculative decoding of one prompt with any local HF target and
DFlash drafter (streams the text; ``--json`` prints the statistics as JSON)."""

from __future__ import annotations

import argparse
import json
import sys

from .args import (
    POLICY_NAMES,
    UsageError,
    add_device_options,
    add_pair_options,
    check_budgets,
    existing_file,
    nonempty_text,
    nonneg_float,
    nonneg_int,
    positive_int,
    probability,
)
from .pair import (
    default_vp_drafter,
    encode,
    incremental_decoder,
    load_pair,
    make_policy_for,
    require_pair_dir,
    stop_ids,
)
from .runtime import resolve_device, setup_threads


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_pair_options(p)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--prompt", type=nonempty_text, default="def fibonacci(n):", help="prompt")
    src.add_argument("--prompt-file", type=existing_file, help="read the prompt from this file")
    p.add_argument("--max-new-tokens", type=positive_int, default=128, help="tokens to generate")
    p.add_argument("--policy", choices=POLICY_NAMES, default="ddtree", help="draft policy")
    p.add_argument("--budget", type=positive_int, default=64, help="draft nodes per round")
    p.add_argument("--temperature", type=nonneg_float, default=0.0, help="0: greedy")
    p.add_argument("--top-k", type=positive_int, default=None, help="(default: no top-k)")
    p.add_argument("--top-p", type=probability, default=None, help="(default: no top-p)")
    p.add_argument("--seed", type=nonneg_int, default=0, help="sampling seed")
    add_device_options(p)
    p.add_argument("--json", action="store_true", help="print text + statistics as JSON only")
    p.add_argument(
        "--cuda-graphs",
        choices=("auto", "off"),
        default="auto",
        help="auto: graph mode on CUDA for the policies it captures (see `info`); off: eager",
    )


def run(args: argparse.Namespace) -> int:
    if args.prompt_file:
        with open(args.prompt_file, encoding="utf-8") as f:
            text = f.read()
        if not text.strip():
            raise UsageError(f"--prompt-file {args.prompt_file}: the file is empty")
    else:
        text = args.prompt
    pair_dir = None if args.target and (args.drafter or args.policy == "ar") else require_pair_dir()
    target = args.target or str(pair_dir / "target")
    drafter = None if args.policy == "ar" else (args.drafter or str(pair_dir / "drafter"))
    vp = None
    if args.policy == "d2sd":  # the only policy that uses a second drafter
        vp = default_vp_drafter(args.drafter, args.vp_drafter, pair_dir) if pair_dir else None
        vp = vp or args.vp_drafter
    device = resolve_device(args.device)
    check_budgets([args.budget], "--budget")
    threads = setup_threads(args.threads, device, [target, drafter])
    print(f"device {device}, {threads}", file=sys.stderr)
    pair = load_pair(target, drafter, device, args.dtype, vp)
    ids = encode(pair, text, device)
    from difftree_rt import SpeculativeDecoder

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
