"""Build the reference pair: a small Qwen3 target trained from scratch on the Python standard
library with its own byte-level BPE tokenizer, and a DFlash drafter trained against it.

Everything runs in resumable chunks (``--max-minutes``, default 9, so each command fits a
10-minute slot): every invocation continues the next unfinished stage

    tokenizer -> data -> target -> drafter -> export

and exits 0 when the pair is exported, or 75 when it stopped because its time ran out
(run it again). Work files (tokenized corpus, checkpoints) live under ``--work``
(default ``build/reference_pair``, gitignored); the export goes to ``--out``.

    # CPU (what ships in assets/reference_pair, ~1 h on 1 thread)
    while python scripts/train_reference_pair.py --preset cpu; [ $? -eq 75 ]; do :; done
    # GPU (a better pair; each command < 10 min)
    while python scripts/train_reference_pair.py --preset gpu --device cuda; [ $? -eq 75 ]
    do :; done
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .corpus import TokenStream, encode_files, load_tokenizer, stdlib_files, train_tokenizer
from .lm import LMTrainConfig, evaluate_perplexity, train_lm

__all__ = ["PRESETS", "main"]

EXIT_MORE = 75  # EX_TEMPFAIL: the chunk ended before the pair was done; run again

# Model + schedule presets. "cpu" is what the shipped pair used; "gpu" is the better pair a
# GPU makes in ~30 min (still <= 40 MB for both models in bf16).
PRESETS: dict[str, dict[str, Any]] = {
    "cpu": {
        "vocab": 4096,
        "target": dict(
            hidden_size=256,
            intermediate_size=768,
            num_hidden_layers=6,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=64,
        ),
        "lm": dict(steps=2000, batch_size=16, context=256, lr=2e-3, warmup=100),
        "drafter": dict(
            num_layers=2,
            num_feature_layers=3,
            steps=1500,
            batch_size=8,
            context=256,
            anchors=24,
            lr=2e-3,
            block_size=16,
        ),
    },
    "gpu": {
        "vocab": 8192,
        "target": dict(
            hidden_size=384,
            intermediate_size=1152,
            num_hidden_layers=6,
            num_attention_heads=6,
            num_key_value_heads=2,
            head_dim=64,
        ),
        "lm": dict(steps=12000, batch_size=64, context=512, lr=1.5e-3, warmup=300),
        "drafter": dict(
            num_layers=2,
            num_feature_layers=3,
            steps=12000,
            batch_size=32,
            context=512,
            anchors=64,
            lr=1e-3,
            block_size=16,
        ),
    },
}


def _log(msg: str) -> None:
    print(f"[reference-pair {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _state(work: Path) -> dict[str, Any]:
    p = work / "state.json"
    return json.loads(p.read_text()) if p.exists() else {}


def _save_state(work: Path, state: dict[str, Any]) -> None:
    (work / "state.json").write_text(json.dumps(state, indent=2))


def _make_target(preset: dict[str, Any], tokenizer: Any, context: int) -> torch.nn.Module:
    from transformers import Qwen3Config, Qwen3ForCausalLM

    cfg = Qwen3Config(
        vocab_size=len(tokenizer),
        max_position_embeddings=max(2048, 4 * context),
        tie_word_embeddings=True,
        rope_theta=10000.0,
        rms_norm_eps=1e-6,
        initializer_range=0.02,
        bos_token_id=None,
        eos_token_id=int(tokenizer.eos_token_id),
        pad_token_id=int(tokenizer.pad_token_id),
        use_cache=True,
        **preset["target"],
    )
    return Qwen3ForCausalLM(cfg)


def stage_tokenizer(work: Path, preset: dict[str, Any]) -> None:
    files = stdlib_files("train")
    _log(f"training a byte-level BPE (vocab {preset['vocab']}) on {len(files)} stdlib files")
    train_tokenizer(files, preset["vocab"], work / "tokenizer")


def stage_data(work: Path) -> None:
    tok = load_tokenizer(work / "tokenizer")
    for split in ("train", "heldout"):
        files = stdlib_files(split)
        arr = encode_files(tok, files)
        np.save(work / f"{split}.npy", arr)
        _log(f"{split}: {len(files)} files, {arr.size} tokens")


def stage_target(
    work: Path, preset: dict[str, Any], device: torch.device, max_seconds: float
) -> bool:
    tok = load_tokenizer(work / "tokenizer")
    cfg = LMTrainConfig(**preset["lm"])
    torch.manual_seed(cfg.seed)
    model = _make_target(preset, tok, cfg.context).to(device)
    stream = TokenStream(np.load(work / "train.npy"))
    step, done = train_lm(model, stream, cfg, work / "target.ckpt", max_seconds=max_seconds)
    _log(f"target: step {step}/{cfg.steps}")
    if done:
        model.save_pretrained(work / "target", safe_serialization=True)
        tok.save_pretrained(work / "target")
    return done


def stage_drafter(
    work: Path, preset: dict[str, Any], device: torch.device, max_seconds: float
) -> bool:
    from transformers import AutoModelForCausalLM

    from .drafter import DrafterTrainConfig, train_drafter

    target = AutoModelForCausalLM.from_pretrained(work / "target", dtype=torch.float32).to(device)
    tok = load_tokenizer(work / "target")
    d = dict(preset["drafter"])
    cfg = DrafterTrainConfig(
        steps=d["steps"],
        batch_size=d["batch_size"],
        context=d["context"],
        anchors=d["anchors"],
        lr=d["lr"],
        block_size=d["block_size"],
        num_layers=d["num_layers"],
        num_feature_layers=d["num_feature_layers"],
        mask_token_id=int(tok.mask_token_id),
    )
    stream = TokenStream(np.load(work / "train.npy"))
    result = train_drafter(
        target,
        stream,
        cfg,
        work / "drafter.ckpt",
        max_seconds=max_seconds,
    )
    _log(f"drafter: step {result.step}/{cfg.steps}")
    if result.finished:
        result.drafter.save_pretrained(work / "drafter")
    return result.finished


def stage_export(work: Path, out: Path, preset_name: str, device: torch.device) -> None:
    """Write the bf16 pair into ``out`` (target/ + drafter/) and the training summary."""
    from transformers import AutoModelForCausalLM

    from difftree_rt.models import DFlashDrafter

    out.mkdir(parents=True, exist_ok=True)
    target = AutoModelForCausalLM.from_pretrained(work / "target", dtype=torch.float32)
    held = TokenStream(np.load(work / "heldout.npy"))
    ctx = PRESETS[preset_name]["lm"]["context"]
    ppl32, n_tok = evaluate_perplexity(target.to(device), held, ctx)
    target = target.to(torch.bfloat16)
    ppl16, _ = evaluate_perplexity(target, held, ctx)
    tdir = out / "target"
    if tdir.exists():
        shutil.rmtree(tdir)
    target.save_pretrained(tdir, safe_serialization=True, max_shard_size="16MB")
    load_tokenizer(work / "target").save_pretrained(tdir)
    drafter = DFlashDrafter.from_pretrained(work / "drafter").to(torch.bfloat16)
    ddir = out / "drafter"
    if ddir.exists():
        shutil.rmtree(ddir)
    drafter.save_pretrained(ddir)
    target_ckpt = torch.load(work / "target.ckpt", map_location="cpu", weights_only=False)
    drafter_ckpt = torch.load(work / "drafter.ckpt", map_location="cpu", weights_only=False)
    summary = {
        "preset": preset_name,
        "config": PRESETS[preset_name],
        "corpus": {
            "source": "Python standard library .py files (site-packages, idlelib, lib2to3 "
            "excluded); held out: md5(relative path) % 40 == 0",
            "python": sys.version.split()[0],
            "train_tokens": int(np.load(work / "train.npy").size),
            "heldout_tokens": int(held.tokens.numel()),
            "train_files": len(stdlib_files("train")),
            "heldout_files": len(stdlib_files("heldout")),
        },
        "target": {
            "steps": target_ckpt["step"],
            "log": target_ckpt["extra"].get("log", []),
            "heldout_ppl_fp32": ppl32,
            "heldout_ppl_bf16": ppl16,
            "heldout_eval_tokens": n_tok,
        },
        "drafter": {
            "steps": drafter_ckpt["step"],
            "log": drafter_ckpt["extra"].get("log", []),
        },
    }
    (out / "training_summary.json").write_text(json.dumps(summary, indent=2))
    _log(f"exported to {out}: held-out ppl fp32 {ppl32:.3f}, bf16 {ppl16:.3f}")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    ap.add_argument("--work", default="build/reference_pair", help="checkpoints, data (ignored)")
    ap.add_argument("--out", default="assets/reference_pair", help="where the pair is exported")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--max-minutes", type=float, default=9.0, help="time budget of this chunk")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    ap.add_argument("--stop-after", choices=["tokenizer", "data", "target", "drafter"])
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    preset = PRESETS[args.preset]
    work = Path(args.work) / args.preset
    work.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    deadline = time.monotonic() + 60 * args.max_minutes
    state = _state(work)
    state.setdefault("preset", args.preset)
    for stage in ("tokenizer", "data", "target", "drafter", "export"):
        if state.get(stage) == "done":
            if args.stop_after == stage:
                return 0
            continue
        left = deadline - time.monotonic()
        if left <= 5:
            return EXIT_MORE
        _log(f"stage {stage} ({left / 60:.1f} min left in this chunk)")
        if stage == "tokenizer":
            stage_tokenizer(work, preset)
            done = True
        elif stage == "data":
            stage_data(work)
            done = True
        elif stage == "target":
            done = stage_target(work, preset, device, left)
        elif stage == "drafter":
            done = stage_drafter(work, preset, device, left)
        else:
            stage_export(work, Path(args.out), args.preset, device)
            done = True
        if not done:
            _save_state(work, state)
            return EXIT_MORE
        state[stage] = "done"
        state[f"{stage}_finished_at"] = time.strftime("%Y-%m-%d %H:%M:%S")
        _save_state(work, state)
        if args.stop_after == stage:
            return 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
