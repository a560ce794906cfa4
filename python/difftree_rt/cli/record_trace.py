"""``difftree-rt record-trace``: generate with a large verified DDTree and record every round
(draft candidates, the verified tree, the target's choices and edge probabilities) for
``difftree-rt eval-policies``. Defaults to the shipped reference pair."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", help="local HF causal LM directory (default: the shipped pair)")
    p.add_argument("--drafter", help="local DFlash drafter directory (default: the shipped pair)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--prompt", default="def fibonacci(n):\n")
    src.add_argument("--prompt-file", help="JSON list or one prompt per line")
    src.add_argument("--prompt-ids", help="one prompt as space-separated token ids")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--budget", type=int, default=512, help="recorded DDTree size")
    p.add_argument("--temperature", type=float, default=0.0, help="generation (0: greedy)")
    p.add_argument(
        "--prob-temperature",
        type=float,
        default=1.0,
        help="temperature of the recorded edge probabilities (the sampling estimate)",
    )
    p.add_argument(
        "--d2sd",
        action="store_true",
        help="also verify D²SD's second pass at every boundary (so eval-policies scores d2sd)",
    )
    p.add_argument("--vp-drafter", default=None, help="D²SD's second drafter (default: --drafter)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default=None)
    p.add_argument("--out", default="trace.safetensors", help="the trace (safetensors)")


def run(args: argparse.Namespace) -> int:
    import torch

    from difftree_rt.engine.sampling import SamplingParams
    from difftree_rt.eval import TraceRecorder

    from .pair import default_pair_dir, encode, load_pair, load_prompts, resolve_device, stop_ids

    device = resolve_device(args.device)
    pair_dir = default_pair_dir()
    pair = load_pair(
        args.target or str(pair_dir / "target"),
        args.drafter or str(pair_dir / "drafter"),
        device,
        args.dtype,
    )
    if args.prompt_ids:
        ids = [torch.tensor([[int(t) for t in args.prompt_ids.split()]], device=device)]
    else:
        prompts = load_prompts(args.prompt_file) if args.prompt_file else [args.prompt]
        ids = [encode(pair, t, device) for t in prompts]
    longest = max(int(x.shape[1]) for x in ids)
    vp = None
    if args.vp_drafter:
        from difftree_rt.models import DFlashDrafter

        vp = DFlashDrafter.from_pretrained(args.vp_drafter).to(
            device=device, dtype=pair.drafter.dtype
        )
    depth = max(pair.drafter.block_size, vp.block_size if vp is not None else 0) - 1
    extra = (2 * depth + 1) * depth if args.d2sd else 0  # first draft + every branch, 2 rules
    rec = TraceRecorder(
        pair.target,
        pair.drafter,
        budget=args.budget,
        max_length=longest + args.max_new_tokens + args.budget + extra + 8,
        prob_params=SamplingParams(temperature=args.prob_temperature),
        d2sd=args.d2sd,
        vp_drafter=vp,
    )
    rec.trace.meta["pair"] = pair.name
    for i, x in enumerate(ids):
        out = rec.generate(
            x,
            args.max_new_tokens,
            temperature=args.temperature,
            seed=args.seed + i,
            stop_token_ids=stop_ids(pair),
        )
        print(f"prompt {i}: {out.stats.new_tokens} tokens, {out.stats.rounds} rounds, "
              f"τ = {out.stats.tau:.2f}")  # fmt: skip
    rec.trace.save(args.out)
    print(f"wrote {args.out}: {len(rec.trace.rounds)} rounds")
    return 0
