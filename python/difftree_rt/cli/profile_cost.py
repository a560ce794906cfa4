"""``difftree-rt profile-cost``: measure verify cost vs tree size (and context) and draft cost
with the real target adapter on this device, and write a CaDDTree cost table (JSON).

``--target`` is a local HF model directory (weights loaded), a ``config.json`` (or a
directory holding only one: random weights of that architecture, same cost), or a preset name
(tiny, small, qwen3-0.6b, qwen3-4b: random-weight Qwen3). ``--drafter`` is a DFlash drafter
directory; without it a random drafter of ``--drafter-layers`` layers is timed.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import statistics
import time
from pathlib import Path
from typing import Any

from .args import (
    add_device_options,
    check_budgets,
    int_at_least,
    model_dir,
    nonneg_int,
    out_file,
    positive_int,
)

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=256),
    "small": dict(hidden_size=256, intermediate_size=768, num_hidden_layers=6,
                  num_attention_heads=8, num_key_value_heads=4, head_dim=32, vocab_size=2048),
    "qwen3-0.6b": dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                       num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                       vocab_size=151936),
    "qwen3-4b": dict(hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
                     num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                     vocab_size=151936),
}  # fmt: skip

DEFAULT_NODES = [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]


def target_spec(text: str) -> str:
    """``--target``: a preset name, a model directory or a ``config.json``."""
    if text in PRESETS:
        return text
    path = Path(text)
    if path.is_file() or (path.is_dir() and (path / "config.json").is_file()):
        return text
    raise argparse.ArgumentTypeError(
        f"{text!r} is neither a preset ({', '.join(PRESETS)}) nor a model directory or config.json"
    )


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--target",
        type=target_spec,
        required=True,
        help=f"HF model dir, config.json, or preset name ({', '.join(PRESETS)})",
    )
    p.add_argument(
        "--drafter", type=model_dir, default=None, help="DFlash drafter dir (default: random)"
    )
    p.add_argument("--drafter-layers", type=positive_int, default=1, help="random drafter's")
    p.add_argument(
        "--block-size", type=int_at_least(2), default=16, help="random drafter's block size"
    )
    p.add_argument(
        "--nodes", type=nonneg_int, nargs="+", default=DEFAULT_NODES, help="tree sizes timed"
    )
    p.add_argument(
        "--contexts", type=positive_int, nargs="+", default=[128, 1024, 4096], help="KV lengths"
    )
    add_device_options(p, threads=False)
    p.add_argument("--repeats", type=positive_int, default=10, help="timed runs (median)")
    p.add_argument("--warmup", type=nonneg_int, default=3, help="untimed runs first")
    p.add_argument("--out", type=out_file, default="cost_table.json", help="cost table JSON")


def _load_target(spec: str, dtype: Any, device: str) -> tuple[Any, str]:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, Qwen3Config, Qwen3ForCausalLM

    if spec in PRESETS:
        cfg = Qwen3Config(**PRESETS[spec], max_position_embeddings=65536,
                          tie_word_embeddings=False, bos_token_id=None, eos_token_id=None,
                          pad_token_id=None)  # fmt: skip
        with torch.device(device):
            model = Qwen3ForCausalLM(cfg)
        return model.to(dtype).eval(), f"preset:{spec} (random weights)"
    has_weights = os.path.isdir(spec) and any(
        f.endswith((".safetensors", ".bin")) for f in os.listdir(spec)
    )
    if has_weights:
        model = AutoModelForCausalLM.from_pretrained(
            spec, dtype=dtype, local_files_only=True, use_safetensors=True
        )
        return model.to(device).eval(), os.path.abspath(spec)
    cfg = AutoConfig.from_pretrained(spec, local_files_only=True)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg)
    return model.to(dtype).eval(), f"{os.path.abspath(spec)} (config only: random weights)"


def _median_ms(fn: Any, device: Any, repeats: int, warmup: int) -> float:
    import torch

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(times)


def run(args: argparse.Namespace) -> int:
    import torch

    from .runtime import resolve_device

    check_budgets([n for n in args.nodes if n > 0], "--nodes")
    device = torch.device(resolve_device(args.device))
    from difftree_rt import ops
    from difftree_rt.models import DFlashDrafter, TargetAdapter
    from difftree_rt.policies import CostTable

    dtype = getattr(torch, args.dtype) if args.dtype else (
        torch.bfloat16 if device.type == "cuda" else torch.float32)  # fmt: skip
    target, target_desc = _load_target(args.target, dtype, str(device))
    if args.drafter:
        drafter = DFlashDrafter.from_pretrained(args.drafter, torch_dtype=dtype, device=device)
        drafter.bind(target)
        drafter_desc = os.path.abspath(args.drafter)
    else:
        gen = torch.Generator().manual_seed(0)
        drafter = DFlashDrafter.for_target(
            target, num_layers=args.drafter_layers, block_size=args.block_size, generator=gen
        ).to(device=device, dtype=dtype)
        drafter.bind(target)
        drafter_desc = f"random ({args.drafter_layers} layers, block {args.block_size})"
    nodes = sorted(set(args.nodes))
    contexts = sorted(set(args.contexts))
    vocab = int(target.config.vocab_size)
    L = drafter.block_size - 1
    adapter = TargetAdapter(
        target,
        max_length=max(contexts) + max(nodes) + 8,
        feature_layers=list(drafter.config.target_layer_ids),
        validate=False,
    )
    gen = torch.Generator().manual_seed(0)
    verify_rows: list[list[float]] = []
    draft_costs: list[float] = []
    with torch.inference_mode():
        for ctx in contexts:
            adapter.reset()
            prompt = torch.randint(0, vocab, (1, ctx), generator=gen).to(device)
            out = adapter.prefill(prompt, last_logits_only=True)
            row = []
            for n in nodes:
                if n == 0:
                    tokens = prompt[:, -1:].to(torch.int32)
                    depth = torch.zeros((1, 1), dtype=torch.int32, device=device)
                    tree_anc, num = None, None
                else:
                    logits = torch.randn((1, L, min(vocab, 4096)), generator=gen).to(device)
                    tree = ops.ddtree_select(logits.float(), n, prompt[:, -1])
                    tokens, depth, tree_anc, num = (
                        tree.token.clamp(min=0), tree.depth, tree.anc, tree.num_nodes)  # fmt: skip
                row.append(
                    _median_ms(
                        lambda: adapter.verify(tokens, depth, tree_anc, num),
                        device,
                        args.repeats,
                        args.warmup,
                    )
                )
            verify_rows.append(row)
            dcache = drafter.new_cache(1, ctx + drafter.block_size + 8)
            assert out.features is not None
            drafter.append_context(dcache, out.features.to(drafter.dtype))
            block = drafter.make_block(prompt[:, -1])
            draft_costs.append(
                _median_ms(
                    lambda: drafter.draft(block, dcache, ctx + drafter.block_size),
                    device,
                    args.repeats,
                    args.warmup,
                )
            )
            print(f"ctx {ctx:>6}: draft {draft_costs[-1]:.3f} ms; verify ms by nodes: "
                  + " ".join(f"{n}:{v:.3f}" for n, v in zip(nodes, row)))  # fmt: skip
    meta: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "device_type": device.type,
        "model": target_desc,
        "model_class": type(target).__name__,
        "drafter": drafter_desc,
        "dtype": str(dtype).removeprefix("torch."),
        "attention": "difftree_rt tree attention (TargetAdapter.verify)",
        "torch": torch.__version__,
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "repeats": args.repeats,
        "statistic": "median",
    }
    table = CostTable(
        nodes=nodes,
        contexts=contexts,
        verify=[verify_rows],
        draft=[draft_costs],
        unit="ms",
        meta=meta,
    )
    table.save(args.out)
    print(f"wrote {args.out}")
    return 0
