"""``difftree-rt bench --baseline CHECKOUT``: the same bench on this version of difftree_rt and
on another checkout of it, side by side in one run.

Both sides run in worker subprocesses of the same script (``bench_worker.py``, JSON lines over
stdin/stdout), so they are measured by identical code; only the imported package and compiled
core differ. The current side imports what this interpreter imports, the baseline side its
checkout's ``python/difftree_rt`` and extension. Both get the same token ids (encoded here
once), max_new_tokens, dtype, device and torch threads. Every repeat of every setting runs on
both sides back to back, in alternating order (current first on even repeats, baseline first on
odd ones), so drift in the machine's speed hits both alike; each run starts with its own
untimed warm-up, as in the plain bench.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import IO, TYPE_CHECKING, Any

from .args import UsageError
from .pair import (
    TOKENIZER_FILES,
    Pair,
    RunResult,
    _dtype,
    encode,
    machine_line,
    plot_results,
    stop_ids,
    timestamp,
)

if TYPE_CHECKING:
    from .bench import Inputs

WORKER = Path(__file__).resolve().parent / "bench_worker.py"
SIDES = ("current", "baseline")


class Side:
    """One worker process: a version of difftree_rt (``checkout`` None: the one imported here)."""

    def __init__(self, name: str, checkout: str | None) -> None:
        self.name = name
        self.checkout = checkout
        env = dict(os.environ)
        if checkout is not None:
            env.pop("DIFFTREE_RT_EXT", None)  # the checkout's own extension, never an override
        self.log: IO[str] = tempfile.TemporaryFile("w+", encoding="utf-8")
        cmd = [sys.executable, str(WORKER), *([checkout] if checkout else [])]
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            encoding="utf-8",
            env=env,
        )
        self.info: dict[str, Any] = {}

    def ask(self, request: dict[str, Any]) -> dict[str, Any]:
        """Send one request, return the reply (``{"ok": False, "error": ...}`` on failure)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        except BrokenPipeError:
            line = ""
        if not line:
            self.proc.wait()
            raise RuntimeError(
                f"the {self.name} bench worker exited (code {self.proc.returncode}): "
                f"{self.log_tail()}"
            )
        return json.loads(line)

    def log_tail(self, lines: int = 5) -> str:
        self.log.seek(0)
        return " | ".join(self.log.read().strip().splitlines()[-lines:])

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.ask({"cmd": "quit"})
            except (RuntimeError, OSError, ValueError):
                pass
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def checkout_sha(path: Path | None) -> str | None:
    """``git rev-parse --short=12 HEAD`` of a checkout (``-dirty`` with tracked changes)."""
    if path is None or not (path / ".git").exists():
        return None
    try:
        sha = subprocess.run(
            ["git", "-C", str(path), "rev-parse", "--short=12", "HEAD"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "-C", str(path), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return None
    return sha + ("-dirty" if dirty else "")


def _prompt_pair(target: str) -> Pair:
    """The target's tokenizer (as :func:`~difftree_rt.cli.pair.load_pair` finds it) and config,
    without its weights: enough to encode the prompts and find the stop token."""
    from transformers import AutoConfig, AutoTokenizer

    tokenizer = None
    if any((Path(target) / f).is_file() for f in TOKENIZER_FILES):
        try:
            tokenizer = AutoTokenizer.from_pretrained(target, local_files_only=True)
        except (OSError, ValueError):
            tokenizer = None
    config = AutoConfig.from_pretrained(target, local_files_only=True)
    return Pair(SimpleNamespace(config=config), None, tokenizer, target)  # type: ignore[arg-type]


def _describe(path: str, info: dict[str, Any] | None) -> str:
    """``reference_pair/target (qwen3, 25.0M params)`` from a worker's model description."""
    p = Path(path).resolve()
    if not info:
        return f"{p.parent.name}/{p.name}"
    n = info["params"]
    size = f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"
    return f"{p.parent.name}/{p.name} ({info['kind']}, {size} params)"


def _run_result(policy: str, budget: int, res: dict[str, Any]) -> RunResult:
    out = RunResult(policy, budget if policy != "ar" else 0)
    for key in ("tokens", "rounds", "accepted", "total_s", "prefill_s", "phase_s", "accept_hist"):
        setattr(out, key, res[key])
    # Token ids, not decoded text: equality is all they are used for.
    out.texts = [" ".join(str(t) for t in ids) for ids in res["outputs"]]
    return out


def compare(
    current: dict[tuple[str, int], list[RunResult]],
    baseline: dict[tuple[str, int], list[RunResult]],
) -> list[dict[str, Any]]:
    """Per setting run on both sides: tokens/s current / baseline as the median, p10 and p90 of
    the repeat-by-repeat ratios (repeat r of one side against repeat r of the other, measured
    back to back), and whether both decoded the same tokens."""
    from .bench import spread

    rows = []
    for key, cur in current.items():
        base = baseline.get(key)
        if not base:
            continue
        ratios = [
            c.tokens_per_s / b.tokens_per_s if b.tokens_per_s else 0.0 for c, b in zip(cur, base)
        ]
        med, p10, p90 = spread(ratios)
        rows.append({
            "policy": key[0], "budget": key[1], "ratio": med, "ratio_p10": p10,
            "ratio_p90": p90, "ratio_runs": ratios, "same_tokens": cur[0].texts == base[0].texts,
        })  # fmt: skip
    return rows


def format_side_by_side(
    current: list[dict[str, Any]],
    baseline: list[dict[str, Any]],
    ratios: list[dict[str, Any]],
    errors: dict[tuple[str, int], str],
) -> str:
    """A Markdown table: per setting τ, tokens/s median [p10, p90] and speedup over AR of each
    side, then current / baseline tokens/s median [p10, p90] and whether the tokens match."""
    base = {(r["policy"], r["budget"]): r for r in baseline}
    ratio = {(r["policy"], r["budget"]): r for r in ratios}

    def tps(r: dict[str, Any]) -> str:
        return f"{r['tokens_per_s']:.1f} [{r['tokens_per_s_p10']:.1f}, {r['tokens_per_s_p90']:.1f}]"

    def sp(r: dict[str, Any]) -> str:
        s = r.get("speedup_vs_ar")
        return f"{s:.2f}x [{r['speedup_p10']:.2f}, {r['speedup_p90']:.2f}]" if s else "-"

    lines = [
        "| policy | budget | τ cur | τ base | tokens/s cur [p10, p90] | tokens/s base [p10, p90] "
        "| speedup cur | speedup base | cur/base [p10, p90] | same tokens |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|:---:|",
    ]
    for r in current:
        key = (r["policy"], r["budget"])
        b, q = base.get(key), ratio.get(key)
        if b is None:
            failed = errors.get(key, "not run")
            cells = ["-", f"failed: {failed[:60]}", "-", "-", "-"]
        else:
            q_text = f"{q['ratio']:.2f}x [{q['ratio_p10']:.2f}, {q['ratio_p90']:.2f}]" if q else "-"
            same = "yes" if q and q["same_tokens"] else "NO"
            cells = [f"{b['tau']:.2f}", tps(b), sp(b), q_text, same]
        lines.append(
            f"| {r['policy']} | {r['budget'] or '-'} | {r['tau']:.2f} | {cells[0]} | {tps(r)} | "
            f"{cells[1]} | {sp(r)} | {cells[2]} | {cells[3]} | {cells[4]} |"
        )
    return "\n".join(lines)


def plot_comparison(
    current: list[dict[str, Any]],
    baseline: list[dict[str, Any]],
    ratios: list[dict[str, Any]],
    out_dir: Path,
    title: str,
) -> Path:
    """One PNG: tokens/s and speedup over AR of both sides per setting (median, p10-p90 bars),
    and tokens/s current / baseline per setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from .pair import _errors

    base = {(r["policy"], r["budget"]): r for r in baseline}
    labels = [f"{r['policy']}@{r['budget']}" if r["budget"] else r["policy"] for r in current]
    xs = np.arange(len(current))
    fig, axes = plt.subplots(1, 3, figsize=(max(12.0, 2.2 * len(current) * 1.5), 4.8))
    width = 0.38
    for ax, what, name in (
        (axes[0], "tokens_per_s", "tokens/s (median, p10-p90)"),
        (axes[1], "speedup", "speedup over AR of the same side"),
    ):
        for j, (side, rows) in enumerate((("current", current), ("baseline", None))):
            if rows is None:
                rows = [base.get((r["policy"], r["budget"]), {}) for r in current]
            med, err = _errors(rows, what)
            ax.bar(xs + (j - 0.5) * width, med, width, yerr=err, capsize=3, label=side)
        if what == "speedup":
            ax.axhline(1.0, color="gray", lw=0.8, ls="--")
        ax.set_ylabel(name)
    by_key = {(r["policy"], r["budget"]): r for r in ratios}
    rs = [by_key.get((r["policy"], r["budget"])) for r in current]
    med = [r["ratio"] if r else 0.0 for r in rs]
    lo = [max(0.0, r["ratio"] - r["ratio_p10"]) if r else 0.0 for r in rs]
    hi = [max(0.0, r["ratio_p90"] - r["ratio"]) if r else 0.0 for r in rs]
    bars = axes[2].bar(xs, med, 0.6, yerr=[lo, hi], capsize=3, color="tab:green")
    axes[2].bar_label(bars, labels=[f"{m:.2f}x" if r else "" for m, r in zip(med, rs)], fontsize=8)
    axes[2].axhline(1.0, color="gray", lw=0.8, ls="--")
    axes[2].set_ylabel("tokens/s current / baseline (p10-p90)")
    for ax in axes:
        ax.set_xticks(xs)
        ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
        ax.grid(True, axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    axes[1].legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    p = out_dir / "baseline_comparison.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    return p


def run_side_by_side(args: argparse.Namespace, inp: Inputs) -> int:
    """``bench --baseline``: run, print both tables side by side, write JSON and plots."""
    import torch

    import difftree_rt

    prompt_pair = _prompt_pair(inp.target)
    prompts = [encode(prompt_pair, t, "cpu")[0].tolist() for t in inp.texts]
    stop = stop_ids(prompt_pair)
    dtype = str(_dtype(args.dtype, inp.device)).removeprefix("torch.")
    threads = torch.get_num_threads()  # as setup_threads chose for this process
    load = {
        "cmd": "load", "target": inp.target, "drafter": inp.drafter,
        "vp_drafter": inp.vp_drafter, "device": inp.device, "dtype": dtype, "threads": threads,
    }  # fmt: skip
    here = Path(difftree_rt.__file__).resolve().parent
    checkouts = {"current": here.parents[1], "baseline": Path(args.baseline)}
    sides = {"current": Side("current", None), "baseline": Side("baseline", args.baseline)}
    try:
        for name, side in sides.items():
            reply = side.ask(load)
            if not reply["ok"]:
                where = "" if name == "current" else f"--baseline {args.baseline}: "
                raise UsageError(f"{where}{name} side failed to load: {reply['error']}")
            side.info = reply["info"]
        return _measure(args, inp, sides, checkouts, prompts, stop, dtype, here)
    finally:
        for side in sides.values():
            side.close()


def _measure(
    args: argparse.Namespace,
    inp: Inputs,
    sides: dict[str, Side],
    checkouts: dict[str, Path],
    prompts: list[list[int]],
    stop: list[int] | None,
    dtype: str,
    here: Path,
) -> int:
    from .bench import POLICY_NAMES, configs_for, summarize, versions

    cur_info = sides["current"].info
    if Path(cur_info["package"]) != here:
        print(f"note: the current worker imported {cur_info['package']}, not {here}", flush=True)
    block = cur_info.get("block_size") or 1
    policies = args.policies or ["ar", *sorted(POLICY_NAMES[1:])]
    configs = configs_for(policies, args.budgets, int(block) - 1)
    target_desc = _describe(inp.target, cur_info.get("target"))
    drafter_desc = _describe(inp.drafter, cur_info.get("drafter"))
    shas = {name: checkout_sha(checkouts[name]) for name in SIDES}
    print(
        f"target {target_desc}, drafter {drafter_desc}; {len(prompts)} prompts x <= "
        f"{args.max_new_tokens} new tokens, greedy; {inp.device} {dtype}, {inp.threads}; "
        f"{args.repeats} timed repeats after a warm-up, per side, interleaved",
        flush=True,
    )
    for name in SIDES:
        info = sides[name].info
        print(
            f"{name}: {info['package']} (checkout {shas[name] or 'not a git checkout'}, "
            f"extension {info.get('extension')})",
            flush=True,
        )
    bar = None
    if not args.quiet:
        from tqdm import tqdm

        bar = tqdm(total=len(configs) * args.repeats * 2, desc="bench", dynamic_ncols=True)
    runs: dict[str, dict[tuple[str, int], list[RunResult]]] = {
        name: {c: [] for c in configs} for name in SIDES
    }
    errors: dict[tuple[str, int], str] = {}
    graphs = False if args.cuda_graphs == "off" else None
    for rep in range(args.repeats):
        order = SIDES if rep % 2 == 0 else SIDES[::-1]
        for pol, budget in configs:
            for name in order:
                if bar is not None:
                    bar.set_postfix_str(f"{pol} {budget or ''} {name} (repeat {rep + 1})")
                    bar.update(1)  # before the run: a skipped one counts too
                if name == "baseline" and (pol, budget) in errors:
                    continue
                reply = sides[name].ask({
                    "cmd": "run", "policy": pol, "budget": budget, "prompts": prompts,
                    "max_new_tokens": args.max_new_tokens, "stop": stop, "cuda_graphs": graphs,
                })  # fmt: skip
                if not reply["ok"]:
                    if name == "current":  # a bug of this version: its traceback, then stop
                        if bar is not None:
                            bar.close()
                        print(reply.get("traceback", ""), file=sys.stderr, end="")
                        print(
                            f"difftree-rt bench: error: the current side failed on {pol} "
                            f"{budget or ''}: {reply['error']}",
                            file=sys.stderr,
                        )
                        return 1
                    # E.g. a policy the older version does not have: reported, not fatal.
                    errors[(pol, budget)] = reply["error"]
                    continue
                runs[name][(pol, budget)].append(_run_result(pol, budget, reply["result"]))
    if bar is not None:
        bar.close()
    results: dict[str, list[dict[str, Any]]] = {}
    for name in SIDES:
        done = {c: r for c, r in runs[name].items() if r}
        results[name] = [summarize(r, done.get(("ar", 0))) for r in done.values()]
    ratios = compare(runs["current"], runs["baseline"])
    print(format_side_by_side(results["current"], results["baseline"], ratios, errors))
    for (pol, budget), err in errors.items():
        print(f"baseline {pol} {budget or ''}: failed: {err}")
    machine = machine_line(inp.device)
    base_info = sides["baseline"].info
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cur_versions = {**versions(), "checkout": str(checkouts["current"]),
                    "checkout_git_sha": shas["current"], "package": cur_info["package"],
                    "extension": cur_info.get("extension")}  # fmt: skip
    base_versions = {k: v for k, v in base_info.items() if k not in ("target", "drafter")}
    base_versions.update(checkout=str(checkouts["baseline"]), checkout_git_sha=shas["baseline"])
    payload = {
        "when": timestamp(),
        "machine": machine,
        "device": inp.device,
        "dtype": dtype,
        "threads": inp.threads,
        "versions": cur_versions,
        "target": inp.target,
        "drafter": inp.drafter,
        "prompts": len(prompts),
        "max_new_tokens": args.max_new_tokens,
        "repeats": args.repeats,
        "statistic": "median (p10, p90) over repeats, after one untimed warm-up per setting",
        "cuda_graphs": args.cuda_graphs,
        "harness": "both sides in bench_worker.py subprocesses; settings interleaved, the two "
        "sides back to back per repeat in alternating order",
        "results": results["current"],
        "baseline": {
            "path": str(checkouts["baseline"]),
            "versions": base_versions,
            "results": results["baseline"],
            "errors": [{"policy": p, "budget": b, "error": e} for (p, b), e in errors.items()],
            "current_over_baseline": ratios,
        },
    }
    (out / "bench.json").write_text(json.dumps(payload, indent=2))
    written = [out / "bench.json"]
    if not args.no_plots:
        names = f"current {shas['current'] or cur_info['package']} vs baseline " + (
            shas["baseline"] or str(checkouts["baseline"])
        )
        title = (
            f"target {target_desc}, drafter {drafter_desc}; {names}\n"
            f"{inp.device} {dtype}, {inp.threads.split(' (')[0]}; {len(prompts)} prompts x "
            f"{args.max_new_tokens} tokens; median, p10-p90 of {args.repeats}\n{machine}"
        )
        written.append(plot_comparison(results["current"], results["baseline"], ratios, out, title))
        written += plot_results(results["current"], out, title)
    print("wrote", ", ".join(str(p) for p in written))
    return 0
