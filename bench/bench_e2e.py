"""End-to-end decoding: several policies and budgets on one target + drafter, in one run.

    python bench/bench_e2e.py --model tiny --policies ar chain ddtree --budgets 8 32 128
    python bench/bench_e2e.py --target /path/to/hf_model --drafter /path/to/dflash_drafter

``--model`` builds a *random-weight* target from a named config (tiny, small, qwen3-0.6b,
qwen3-4b) and a random DFlash drafter for it; ``--train-steps N`` first trains that drafter for
N steps on the target's own greedy continuations so acceptance is not trivially ~1 (still
random-weight models: the numbers measure the runtime, not a published pair). Random models
have no tokenizer: prompt text is encoded byte-wise (id = byte mod V); a local ``--target``
directory with a tokenizer uses it.

Per (policy, budget): tokens/s, τ, rounds, ms per round and per phase, speedup over "ar"
measured in the same run. Table on stdout; JSON in bench/results/bench_e2e-*.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import print_table, stamp, write_json
from difftree_rt import SpeculativeDecoder
from difftree_rt.engine.stats import PHASES
from difftree_rt.models import DFlashDrafter
from difftree_rt.models.dflash import extract_features

CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=256),
    "tiny-v32": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=32),
    "small": dict(hidden_size=256, intermediate_size=768, num_hidden_layers=6,
                  num_attention_heads=8, num_key_value_heads=4, head_dim=32, vocab_size=2048),
    "qwen3-0.6b": dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                       num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                       vocab_size=151936),
    "qwen3-4b": dict(hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
                     num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                     vocab_size=151936),
}  # fmt: skip


def build_random(name: str, dtype: torch.dtype, device: str, seed: int) -> torch.nn.Module:
    from transformers import Qwen3Config, Qwen3ForCausalLM

    cfg = Qwen3Config(
        **CONFIGS[name],
        max_position_embeddings=4096,
        initializer_range=0.25 if name in ("tiny", "tiny-v32", "small") else 0.02,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    torch.manual_seed(seed)
    with torch.device(device):
        model = Qwen3ForCausalLM(cfg)
    return model.to(dtype).eval()


def train_drafter(target: torch.nn.Module, drafter: DFlashDrafter, steps: int, seed: int) -> float:
    """DFlash training (ALGORITHMS.md §1) on the target's greedy continuations; returns seconds."""
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    dev = drafter.device
    vocab, s_len, m, batch = target.config.vocab_size, drafter.block_size, 6, 8
    prompts = torch.randint(0, vocab, (128, 4), generator=gen).to(dev)
    with torch.no_grad():
        seqs = target.generate(prompts, attention_mask=torch.ones_like(prompts), do_sample=False,
                               max_new_tokens=60, pad_token_id=0)  # fmt: skip
        feats = extract_features(
            target(seqs, output_hidden_states=True).hidden_states, drafter.config.target_layer_ids
        )
    t_len = seqs.shape[1]
    weights = torch.exp(-torch.arange(s_len - 1, device=dev) / max(1.0, (s_len - 1) / 2))
    weights = weights / weights.sum()
    block_of = torch.arange(m * s_len, device=dev) // s_len
    opt = torch.optim.Adam(drafter.parameters(), lr=1e-2)
    drafter.train()
    for _ in range(steps):
        idx = torch.randint(0, seqs.shape[0], (batch,), generator=gen).to(dev)
        x, f = seqs[idx], feats[idx]
        a = torch.randint(1, t_len - s_len + 1, (batch, m), generator=gen).to(dev)
        pos = (a[:, :, None] + torch.arange(s_len, device=dev)).reshape(batch, -1)
        block = torch.full((batch, m, s_len), drafter.mask_token_id, device=dev)
        block[:, :, 0] = torch.gather(x, 1, a)
        ctx = torch.arange(t_len, device=dev)[None, None] < a.repeat_interleave(s_len, 1)[..., None]
        mask = torch.cat([ctx, (block_of[:, None] == block_of[None]).expand(batch, -1, -1)], 2)
        hidden = drafter(block.reshape(batch, -1), f, pos, attention_mask=mask)
        logits = drafter.compute_logits(hidden).reshape(batch, m, s_len, -1)[:, :, 1:]
        labels = torch.gather(x, 1, pos).reshape(batch, m, s_len)[:, :, 1:]
        ce = F.cross_entropy(logits.float().flatten(0, 2), labels.flatten(), reduction="none")
        loss = (ce.reshape(batch, m, s_len - 1) * weights).sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    drafter.eval()
    return time.perf_counter() - t0


def load_prompts(path: Path, vocab: int, tokenizer: Any, device: str) -> list[torch.Tensor]:
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        text = line.replace("\\n", "\n").strip()
        if not text:
            continue
        if tokenizer is not None:
            ids = tokenizer(text, return_tensors="pt").input_ids
        else:
            ids = torch.tensor([[b % vocab for b in text.encode("utf-8")]])
        out.append(ids.to(device))
    return out


def run_one(dec: SpeculativeDecoder, prompts: list[torch.Tensor], new: int) -> dict[str, Any]:
    dec.generate(prompts[0], min(new, 8))  # warm-up (allocations, first-call overheads)
    tokens, rounds, accepted, total = 0, 0, 0, 0.0
    phases = dict.fromkeys(PHASES, 0.0)
    for p in prompts:
        s = dec.generate(p, new).stats
        tokens += s.new_tokens
        rounds += s.rounds
        accepted += sum(s.accepted_lengths)
        total += s.total_time
        for k, v in s.phase_time.items():
            phases[k] += v
    decode = total - phases["prefill"]
    return {
        "tokens": tokens,
        "rounds": rounds,
        "tau": 1 + accepted / rounds if rounds else 0.0,
        "tokens_per_s": tokens / total,
        "ms_per_round": 1e3 * decode / rounds if rounds else 0.0,
        "phase_ms_per_round": {
            k: (1e3 * v / rounds if rounds else 0.0) for k, v in phases.items() if k != "prefill"
        },
        "prefill_ms": 1e3 * phases["prefill"] / len(prompts),
        "total_s": total,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="tiny", choices=sorted(CONFIGS))
    ap.add_argument("--target", help="local HF model directory (instead of --model)")
    ap.add_argument("--drafter", help="local DFlash drafter directory")
    ap.add_argument("--drafter-layers", type=int, default=1)
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--train-steps", type=int, default=0, help="train the random drafter first")
    ap.add_argument("--prompts", default=str(Path(__file__).parent / "prompts" / "short.txt"))
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--policies", nargs="+", default=["ar", "chain", "ddtree"])
    ap.add_argument("--budgets", nargs="+", type=int, default=[16, 64])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    default_dtype = "bfloat16" if args.device.startswith("cuda") else "float32"
    dtype = getattr(torch, args.dtype or default_dtype)
    tokenizer = None
    if args.target:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        target = AutoModelForCausalLM.from_pretrained(
            args.target, torch_dtype=dtype, use_safetensors=True
        )
        target = target.to(args.device).eval()
        try:
            tokenizer = AutoTokenizer.from_pretrained(args.target)
        except (OSError, ValueError):
            tokenizer = None
        model_name = args.target
    else:
        target = build_random(args.model, dtype, args.device, args.seed)
        model_name = f"{args.model} (random weights)"
    if args.drafter:
        drafter = DFlashDrafter.from_pretrained(args.drafter, torch_dtype=dtype, device=args.device)
        drafter.bind(target)
        train_s = 0.0
    else:
        gen = torch.Generator(device=args.device).manual_seed(args.seed)
        drafter = DFlashDrafter.for_target(
            target, num_layers=args.drafter_layers, block_size=args.block_size, generator=gen
        )
        train_s = (
            train_drafter(target, drafter, args.train_steps, args.seed) if args.train_steps else 0.0
        )
    prompts = load_prompts(Path(args.prompts), target.config.vocab_size, tokenizer, args.device)

    configs: list[tuple[str, int]] = [("ar", 0)] if "ar" in args.policies else []
    configs += [(p, b) for p in args.policies if p != "ar" for b in args.budgets]
    results = []
    for policy, budget in configs:
        dec = SpeculativeDecoder(target, drafter, policy, budget=max(budget, 1))
        results.append(
            {"policy": policy, "budget": budget, **run_one(dec, prompts, args.max_new_tokens)}
        )
    base = next((r["tokens_per_s"] for r in results if r["policy"] == "ar"), None)
    for r in results:
        r["speedup_vs_ar"] = r["tokens_per_s"] / base if base else None

    shown = ("draft", "select", "verify", "accept", "commit", "host")
    headers = ["policy", "budget", "tok/s", "speedup", "tau", "rounds", "ms/round", *shown]
    rows = [
        [r["policy"], r["budget"] or "-", r["tokens_per_s"],
         f"{r['speedup_vs_ar']:.2f}x" if r["speedup_vs_ar"] else "-", f"{r['tau']:.2f}",
         r["rounds"], f"{r['ms_per_round']:.2f}",
         *(f"{r['phase_ms_per_round'][k]:.2f}" for k in shown)]
        for r in results
    ]  # fmt: skip
    print(f"target: {model_name}, drafter: {args.drafter or 'random'}"
          f"{f' trained {args.train_steps} steps' if args.train_steps else ''}, "
          f"device {args.device}, dtype {dtype}, {len(prompts)} prompts x "
          f"{args.max_new_tokens} new tokens, greedy")  # fmt: skip
    print_table(headers, rows)
    payload = {
        "stamp": stamp(args.device),
        "args": vars(args),
        "model": model_name,
        "drafter_train_s": train_s,
        "results": results,
    }
    print("wrote", write_json("bench_e2e", payload))


if __name__ == "__main__":
    main()
