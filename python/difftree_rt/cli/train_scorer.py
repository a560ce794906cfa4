"""``difftree-rt train-scorer TRACE...``: fit the TAPS edge scorer (ALGORITHMS.md §6) on traces
recorded with ``difftree-rt record-trace`` (one target/drafter pair), and save it for
``SpeculativeDecoder(policy=TapsPolicy(budget, scorer=PATH))``."""

from __future__ import annotations

import argparse

from .args import existing_file, model_dir, nonneg_int, out_file, positive_float, positive_int


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "traces",
        nargs="+",
        type=existing_file,
        help="trace .safetensors files (difftree-rt record-trace)",
    )
    p.add_argument("--width", type=positive_int, default=64, help="pool beam width W")
    p.add_argument("--pool-size", type=positive_int, default=128, help="pool nodes P")
    p.add_argument("--epochs", type=positive_int, default=5, help="passes over the rounds")
    p.add_argument("--lr", type=positive_float, default=2e-3, help="learning rate")
    p.add_argument("--seed", type=nonneg_int, default=0, help="initialisation seed")
    p.add_argument(
        "--target",
        type=model_dir,
        help="local HF target directory: token features from a projection of its input "
        "embedding (default: a learned hashed token table)",
    )
    p.add_argument(
        "--out", type=out_file, default="taps_scorer.safetensors", help="the scorer (safetensors)"
    )


def run(args: argparse.Namespace) -> int:
    from difftree_rt.eval import Trace
    from difftree_rt.policies.taps_scorer import train_scorer

    traces = [Trace.load(path) for path in args.traces]
    embedding = None
    if args.target:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(
            args.target, local_files_only=True, use_safetensors=True
        )
        embedding = model.get_input_embeddings().weight.detach().float()
    model = train_scorer(
        traces,
        width=args.width,
        pool_size=args.pool_size,
        epochs=args.epochs,
        lr=args.lr,
        embedding=embedding,
        seed=args.seed,
        log=print,
    )
    model.save(args.out)
    n = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"wrote {args.out} ({n} parameters, {sum(len(t.rounds) for t in traces)} rounds)")
    return 0
