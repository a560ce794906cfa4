"""``difftree-rt train-drafter``: train a DFlash drafter for any local HF causal LM.

Data: ``--data stdlib`` (the Python standard library, train split), or files / directories of
text (``--glob`` picks files inside directories); ``--generated N`` first replaces the corpus by
N target-generated greedy continuations of corpus prompts (aligns acceptance best). Resumable:
re-running with the same ``--ckpt`` continues; ``--max-minutes`` ends a chunk (exit code 75)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .args import (
    device_name,
    existing_path,
    int_at_least,
    model_dir,
    nonneg_int,
    out_dir,
    out_path,
    positive_float,
    positive_int,
    probability,
)

EXIT_MORE = 75


def data_source(text: str) -> str:
    """``--data``: ``stdlib`` or an existing file or directory."""
    return text if text == "stdlib" else existing_path(text)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", type=model_dir, required=True, help="local HF causal LM directory")
    p.add_argument(
        "--out", type=out_dir, required=True, help="drafter output directory (published format)"
    )
    p.add_argument(
        "--data",
        nargs="+",
        type=data_source,
        default=["stdlib"],
        help="'stdlib' or files/directories",
    )
    p.add_argument("--glob", default="*.py", help="file pattern inside data directories")
    p.add_argument(
        "--tokenizer", type=existing_path, default=None, help="default: the target directory"
    )
    p.add_argument(
        "--generated", type=nonneg_int, default=0, help="train on N target continuations"
    )
    p.add_argument(
        "--ckpt", type=out_path, default=None, help="safetensors checkpoint (default: <out>.ckpt)"
    )
    p.add_argument("--steps", type=positive_int, default=2000, help="optimizer steps")
    p.add_argument("--batch-size", type=positive_int, default=8, help="sequences per step")
    p.add_argument("--context", type=positive_int, default=256, help="tokens per sequence")
    p.add_argument("--anchors", type=positive_int, default=16, help="blocks per sequence")
    p.add_argument("--lr", type=positive_float, default=2e-3, help="peak learning rate")
    p.add_argument("--block-size", type=int_at_least(2), default=16, help="S (draft depth + 1)")
    p.add_argument(
        "--gamma", type=positive_float, default=None, help="loss decay (default 7 for S=16)"
    )
    p.add_argument("--num-layers", type=positive_int, default=1, help="drafter layers")
    p.add_argument(
        "--num-feature-layers",
        type=positive_int,
        default=None,
        help="target layers tapped for features (default: the config's rule)",
    )
    p.add_argument(
        "--target-layer-ids",
        type=nonneg_int,
        nargs="+",
        default=None,
        help="tapped target layers (default: spread over the target)",
    )
    p.add_argument(
        "--mask-token-id", type=nonneg_int, default=None, help="default: tokenizer's mask"
    )
    p.add_argument(
        "--prefix-geom",
        type=probability,
        default=None,
        help="D²SD variable prefix prior in (0, 1] (default: off)",
    )
    p.add_argument("--seed", type=nonneg_int, default=0, help="data and initialisation seed")
    p.add_argument(
        "--device",
        type=device_name,
        default="auto",
        help="auto (cuda when available, else cpu) | cpu | cuda | cuda:N",
    )
    p.add_argument("--no-autocast", action="store_true", help="train in fp32 (no bf16 autocast)")
    p.add_argument(
        "--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's)"
    )
    p.add_argument(
        "--max-minutes",
        type=positive_float,
        default=None,
        help="end this chunk after N minutes (default: run to the end)",
    )


def _files(data: list[str], pattern: str) -> list[Path]:
    out: list[Path] = []
    for d in data:
        p = Path(d)
        out += sorted(p.rglob(pattern)) if p.is_dir() else [p]
    return out


def run(args: argparse.Namespace) -> int:
    import torch

    from .args import UsageError
    from .runtime import resolve_device

    if args.context <= args.block_size:
        raise UsageError(f"--context ({args.context}) must exceed --block-size ({args.block_size})")
    args.device = resolve_device(args.device)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from difftree_rt.train.corpus import TokenStream, encode_files, stdlib_files
    from difftree_rt.train.drafter import (
        DrafterTrainConfig,
        generate_continuations,
        train_drafter,
    )

    if args.threads:
        torch.set_num_threads(args.threads)
    target = AutoModelForCausalLM.from_pretrained(
        args.target, dtype=torch.float32, local_files_only=True, use_safetensors=True
    )
    target = target.to(args.device).eval()
    tok = AutoTokenizer.from_pretrained(args.tokenizer or args.target, local_files_only=True)
    files = stdlib_files("train") if args.data == ["stdlib"] else _files(args.data, args.glob)
    print(f"tokenizing {len(files)} files ...", flush=True)
    stream = TokenStream(encode_files(tok, files))
    data: TokenStream | torch.Tensor = stream
    if args.generated:
        prompt_len = max(16, args.context // 4)
        data = generate_continuations(
            target, stream, args.generated, prompt_len, args.context - prompt_len, seed=args.seed
        )
    mask_id = args.mask_token_id
    if mask_id is None and tok.mask_token_id is not None:
        mask_id = int(tok.mask_token_id)
    cfg = DrafterTrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        context=args.context,
        anchors=args.anchors,
        lr=args.lr,
        block_size=args.block_size,
        gamma=args.gamma,
        num_layers=args.num_layers,
        num_feature_layers=args.num_feature_layers,
        target_layer_ids=args.target_layer_ids,
        mask_token_id=mask_id,
        prefix_geom=args.prefix_geom,
        seed=args.seed,
        autocast=not args.no_autocast,
    )
    ckpt = args.ckpt or str(Path(args.out).with_suffix(".ckpt"))
    max_s = 60 * args.max_minutes if args.max_minutes else None
    res = train_drafter(target, data, cfg, ckpt, max_seconds=max_s)
    if not res.finished:
        print(f"stopped at step {res.step}/{cfg.steps}; run again to resume from {ckpt}")
        return EXIT_MORE
    res.drafter.save_pretrained(args.out)
    last = res.log[-1] if res.log else {}
    print(f"saved {args.out} (step {res.step}, last log {last})")
    return 0
