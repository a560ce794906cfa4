"""``difftree-rt record-trace``: generate with a large verified DDTree and record every round
(draft candidates, the verified tree, the target's choices and edge probabilities) for
``difftree-rt eval-policies``. Defaults to the shipped reference pair."""

from __future__ import annotations

import argparse

from .args import (
    add_device_options,
    add_pair_options,
    existing_file,
    model_dir,
    nonempty_text,
    nonneg_float,
    nonneg_int,
    out_file,
    positive_float,
    positive_int,
    token_ids,
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_pair_options(p, vp=False)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--prompt", type=nonempty_text, default="def fibonacci(n):\n", help="prompt")
    src.add_argument("--prompt-file", type=existing_file, help="JSON list or one prompt per line")
    src.add_argument("--prompt-ids", type=token_ids, help="one prompt as space-separated token ids")
    p.add_argument("--max-new-tokens", type=positive_int, default=128, help="tokens per prompt")
    p.add_argument("--budget", type=positive_int, default=512, help="recorded DDTree size")
    p.add_argument("--temperature", type=nonneg_float, default=0.0, help="generation (0: greedy)")
    p.add_argument(
        "--prob-temperature",
        type=positive_float,
        default=1.0,
        help="temperature of the recorded edge probabilities (the sampling estimate)",
    )
    p.add_argument(
        "--d2sd",
        action="store_true",
        help="also verify D²SD's second pass at every boundary (so eval-policies scores d2sd)",
    )
    p.add_argument(
        "--vp-drafter",
        type=model_dir,
        default=None,
        help="D²SD's second drafter (default: --drafter)",
    )
    p.add_argument("--seed", type=nonneg_int, default=0, help="seed of prompt i is seed + i")
    add_device_options(p)
    p.add_argument(
        "--out", type=out_file, default="trace.safetensors", help="the trace (safetensors)"
    )


def run(args: argparse.Namespace) -> int:
    import torch

    from .args import check_budgets
    from .pair import encode, load_pair, load_prompts, require_pair_dir, stop_ids
    from .runtime import resolve_device, setup_threads

    pair_dir = None if args.target and args.drafter else require_pair_dir()
    target = args.target or str(pair_dir / "target")
    drafter = args.drafter or str(pair_dir / "drafter")
    prompts = load_prompts(args.prompt_file, "--prompt-file") if args.prompt_file else None
    device = resolve_device(args.device)
    check_budgets([args.budget], "--budget")
    print(f"device {device}, {setup_threads(args.threads, device, [target, drafter])}")
    pair = load_pair(target, drafter, device, args.dtype)
    from difftree_rt.engine.sampling import SamplingParams
    from difftree_rt.eval import TraceRecorder

    if args.prompt_ids is not None:
        ids = [torch.tensor([args.prompt_ids], device=device)]
    else:
        ids = [encode(pair, t, device) for t in (prompts or [args.prompt])]
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
