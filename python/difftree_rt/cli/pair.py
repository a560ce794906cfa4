"""Shared pieces of the end-to-end commands: locating and loading a target + drafter pair,
prompts, timed runs of several policies in one process, and the PNG plots.

Vocabulary: T prompt length, L draft depth (block size - 1).
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .args import DTYPE_HELP, DTYPES, UsageError
from .runtime import resolve_device

if TYPE_CHECKING:
    import torch


__all__ = [
    "Pair",
    "RunResult",
    "default_pair_dir",
    "find_pair_dir",
    "incremental_decoder",
    "load_pair",
    "load_prompts",
    "machine_line",
    "plot_results",
    "require_pair_dir",
    "resolve_device",
    "run_config",
]

PAIR_ENV = "DIFFTREE_RT_PAIR"


def _installed_pair_dir() -> Path | None:
    """The pair shipped inside the installed package (``difftree_rt/assets/reference_pair``)."""
    from importlib.resources import files

    try:
        # Joined before converting: an editable install's root is a multiplexed Traversable.
        found = files("difftree_rt").joinpath("assets").joinpath("reference_pair")
    except (ModuleNotFoundError, TypeError):  # pragma: no cover
        return None
    return Path(os.fspath(found)) if isinstance(found, os.PathLike) else None


def _source_pair_dir() -> Path:
    """``<repository>/assets/reference_pair`` of a source checkout (editable installs)."""
    return Path(__file__).resolve().parents[3] / "assets" / "reference_pair"


def pair_search_path() -> list[Path]:
    """Where the shipped pair is looked for, in order: ``$DIFFTREE_RT_PAIR``, the installed
    package data, the source tree."""
    env = os.environ.get(PAIR_ENV)
    if env:
        return [Path(env)]
    installed = _installed_pair_dir()
    return [p for p in (installed, _source_pair_dir()) if p is not None]


def find_pair_dir() -> Path | None:
    """The first directory of :func:`pair_search_path` that holds a pair, else None.

    Raises:
        UsageError: ``$DIFFTREE_RT_PAIR`` is set but holds no pair.
    """
    env = os.environ.get(PAIR_ENV)
    if env and not pair_available(Path(env)):
        raise UsageError(f"{PAIR_ENV}={env} holds no target/ and drafter/ model directories")
    return next((p for p in pair_search_path() if pair_available(p)), None)


def default_pair_dir() -> Path:
    """The shipped reference pair (see :func:`find_pair_dir`); when none is found, the first
    place looked (for messages)."""
    found = find_pair_dir()
    return found if found is not None else pair_search_path()[0]


def require_pair_dir() -> Path:
    """The shipped pair, for a command given no ``--target``.

    Raises:
        UsageError: no pair was found.
    """
    found = find_pair_dir()
    if found is None:
        looked = ", ".join(str(p) for p in pair_search_path())
        raise UsageError(
            f"no --target given and no shipped reference pair found (looked in {looked}); "
            f"pass --target/--drafter or set {PAIR_ENV}"
        )
    return found


def pair_available(path: Path) -> bool:
    """Whether ``path`` holds ``target/`` and ``drafter/`` model directories."""
    return all((path / d / "config.json").exists() for d in ("target", "drafter"))


@dataclass
class Pair:
    target: torch.nn.Module
    drafter: Any  # DFlashDrafter (bound)
    tokenizer: Any | None
    name: str
    vp_drafter: Any | None = None  # D²SD's second drafter (DFlashDrafter), when one is given


#: Files of which at least one marks a directory as holding a tokenizer.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


def _dtype(name: str | None, device: str) -> torch.dtype:
    """``--dtype`` (any spelling of :data:`~difftree_rt.cli.args.DTYPES`) or the device's
    default: bfloat16 on CUDA, float32 on CPU."""
    import torch

    if name is None:
        name = "bfloat16" if device.startswith("cuda") else "float32"
    if name.lower() not in DTYPES:
        raise UsageError(f"--dtype must be one of {DTYPE_HELP}, got {name!r}")
    return getattr(torch, DTYPES[name.lower()])


def load_pair(
    target_path: str | Path,
    drafter_path: str | Path | None,
    device: str = "cpu",
    dtype: str | None = None,
    vp_drafter_path: str | Path | None = None,
) -> Pair:
    """Load an HF target (+ tokenizer when present) and a DFlash drafter bound to it (and,
    optionally, D²SD's variable-prefix second drafter)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from difftree_rt.models import DFlashDrafter

    dt = _dtype(dtype, device)
    target = AutoModelForCausalLM.from_pretrained(
        str(target_path), dtype=dt, local_files_only=True, use_safetensors=True
    )
    target = target.to(device).eval()
    tokenizer = None
    # Without tokenizer files transformers may build an empty tokenizer (every text -> no ids).
    if any((Path(target_path) / f).is_file() for f in TOKENIZER_FILES):
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(target_path), local_files_only=True)
        except (OSError, ValueError):
            tokenizer = None
    drafter = None
    if drafter_path is not None:
        drafter = DFlashDrafter.from_pretrained(str(drafter_path)).to(device=device, dtype=dt)
        drafter.bind(target)
    vp = None
    if vp_drafter_path is not None:
        vp = DFlashDrafter.from_pretrained(str(vp_drafter_path)).to(device=device, dtype=dt)
        vp.bind(target)
    return Pair(target, drafter, tokenizer, str(target_path), vp)


def default_vp_drafter(args_drafter: str | None, args_vp: str | None, pair_dir: Path) -> str | None:
    """``--vp-drafter``, else the shipped pair's ``vp_drafter/`` with the shipped drafter."""
    if args_vp:
        return args_vp
    shipped = pair_dir / "vp_drafter"
    return str(shipped) if args_drafter is None and (shipped / "config.json").exists() else None


def make_policy_for(pair: Pair, policy: str, budget: int) -> Any:
    """The policy argument for ``SpeculativeDecoder``: the name, or for d2sd with a loaded VP
    drafter the :class:`~difftree_rt.policies.D2SDPolicy` that uses it."""
    if policy == "d2sd" and pair.vp_drafter is not None:
        from difftree_rt.policies import D2SDPolicy

        return D2SDPolicy(max(1, budget), vp_drafter=pair.vp_drafter)
    return policy


def load_prompts(path: str | Path, flag: str = "--prompts") -> list[str]:
    """Prompts from a JSON list (of strings or ``{"prompt": ...}``, or ``{"prompts": [...]}``)
    or a text file with one prompt per line (``\\n`` escapes allowed).

    Raises:
        UsageError: the file is unreadable, not valid JSON of that shape, or has no prompt
            (the message names ``flag`` and the path).
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{flag} {path}: cannot read ({exc})") from None
    if p.suffix == ".json":
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise UsageError(f"{flag} {path}: invalid JSON ({exc})") from None
        if isinstance(data, dict):
            data = data.get("prompts")
        items = data if isinstance(data, list) else None
        if items is None or not all(
            isinstance(d, str) or (isinstance(d, dict) and isinstance(d.get("prompt"), str))
            for d in items
        ):
            raise UsageError(
                f'{flag} {path}: expected a JSON list of strings or {{"prompt": str}} objects'
            )
        prompts = [d["prompt"] if isinstance(d, dict) else d for d in items]
    else:
        prompts = [ln.replace("\\n", "\n") for ln in text.splitlines() if ln.strip()]
    if not any(t.strip() for t in prompts):
        raise UsageError(f"{flag} {path}: no prompts in the file")
    return prompts


def encode(pair: Pair, text: str, device: str) -> torch.Tensor:
    """Prompt text -> ids [1, T] (byte-wise mod V without a tokenizer)."""
    import torch

    if pair.tokenizer is not None:
        ids = pair.tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
    else:
        vocab = int(pair.target.config.vocab_size)
        ids = torch.tensor([[b % vocab for b in text.encode("utf-8")]])
    if ids.shape[1] == 0:
        raise UsageError(f"the prompt {text[:40]!r} encodes to no tokens")
    return ids.to(device)


def stop_ids(pair: Pair) -> list[int] | None:
    tok = pair.tokenizer
    if tok is not None and tok.eos_token_id is not None:
        return [int(tok.eos_token_id)]
    return None


def incremental_decoder(tokenizer: Any | None) -> Callable[[list[int]], str]:
    """A function fed new ids that returns the newly printable text (holds back partial
    UTF-8 sequences, which byte-level BPE can split across tokens)."""
    ids: list[int] = []
    shown = [0]

    def feed(new: list[int]) -> str:
        ids.extend(new)
        if tokenizer is None:
            return " ".join(str(i) for i in new) + " "
        text = tokenizer.decode(ids)
        if text.endswith("\ufffd"):
            return ""
        out = text[shown[0] :]
        shown[0] = len(text)
        return out

    return feed


@dataclass
class RunResult:
    """Totals of one (policy, budget) over all prompts."""

    policy: str
    budget: int
    tokens: int = 0
    rounds: int = 0
    accepted: int = 0
    total_s: float = 0.0
    prefill_s: float = 0.0
    phase_s: dict[str, float] = field(default_factory=dict)
    accept_hist: list[int] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    modes: dict[int, int] = field(default_factory=dict)

    def modes_line(self) -> str:
        """``policy="auto"``: what it chose, e.g. "target step 70%, tree N=17 30%" ("" else)."""
        total = sum(self.modes.values())
        if not total:
            return ""
        parts = [
            f"{'target step' if n == 1 else f'tree N={n}'} {100 * c / total:.0f}%"
            for n, c in sorted(self.modes.items(), key=lambda kv: -kv[1])
        ]
        return ", ".join(parts)

    @property
    def tau(self) -> float:
        return 1.0 + self.accepted / self.rounds if self.rounds else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.total_s if self.total_s > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "budget": self.budget,
            "tokens": self.tokens,
            "rounds": self.rounds,
            "tau": self.tau,
            "tokens_per_s": self.tokens_per_s,
            "total_s": self.total_s,
            "prefill_s": self.prefill_s,
            "phase_s": self.phase_s,
            "accept_hist": self.accept_hist,
        }


def run_config(
    pair: Pair,
    policy: str,
    budget: int,
    prompts: Sequence[torch.Tensor],
    max_new_tokens: int,
    *,
    warmup: bool = True,
    stop: list[int] | None = None,
    on_tokens: Callable[[int, list[int]], None] | None = None,
    decoder: Any | None = None,
    cuda_graphs: bool | None = None,
) -> RunResult:
    """Greedy generation of every prompt with one (policy, budget); totals and histogram.

    ``on_tokens(prompt_index, ids)`` receives the streamed tokens. ``cuda_graphs`` goes to
    :class:`~difftree_rt.SpeculativeDecoder` (None: graph mode where it applies).
    """
    from difftree_rt import SpeculativeDecoder

    dec = decoder or SpeculativeDecoder(
        pair.target,
        pair.drafter if policy != "ar" else None,
        make_policy_for(pair, policy, budget),
        budget=max(1, budget),
        cuda_graphs=cuda_graphs,
    )
    depth = pair.drafter.block_size - 1 if pair.drafter is not None else 0
    res = RunResult(policy, budget if policy != "ar" else 0, accept_hist=[0] * (depth + 1))
    if warmup:
        dec.generate(prompts[0], min(8, max_new_tokens))
    for i, ids in enumerate(prompts):
        cb = (lambda new, i=i: on_tokens(i, new)) if on_tokens is not None else None
        out = dec.generate(ids, max_new_tokens, stop_token_ids=stop, streamer=cb)
        s = out.stats
        res.tokens += s.new_tokens
        res.rounds += s.rounds
        res.accepted += sum(s.accepted_lengths)
        res.total_s += s.total_time
        res.prefill_s += s.phase_time.get("prefill", 0.0)
        for k, v in s.phase_time.items():
            res.phase_s[k] = res.phase_s.get(k, 0.0) + v
        for n, c in s.modes.items():
            res.modes[n] = res.modes.get(n, 0) + c
        if policy != "ar":
            for a in s.accepted_lengths:
                res.accept_hist[min(a, depth)] += 1
        res.texts.append(
            pair.tokenizer.decode(out.sequences[0, ids.shape[1] :])
            if pair.tokenizer is not None
            else ""
        )
    return res


def machine_line(device: str) -> str:
    """One line naming the machine, e.g. for tables and JSON."""
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        hw = torch.cuda.get_device_name(torch.device(device))
    else:
        hw = platform.processor() or platform.machine()
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    hw = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
        hw += f", {torch.get_num_threads()} torch thread(s)"
    return f"{hw}; torch {torch.__version__}; python {sys.version.split()[0]}"


#: Row fields of a bench setting: (median, p10, p90) of tokens/s and of the speedup over AR.
SPREAD_KEYS = {
    "tokens_per_s": ("tokens_per_s", "tokens_per_s_p10", "tokens_per_s_p90"),
    "speedup": ("speedup_vs_ar", "speedup_p10", "speedup_p90"),
}


def _errors(rows: Sequence[dict[str, Any]], what: str) -> tuple[list[float], list[list[float]]]:
    """Medians and matplotlib's ``[below, above]`` error extents (from p10/p90) of ``what``."""
    k_med, k_lo, k_hi = SPREAD_KEYS[what]
    med = [float(r.get(k_med) or 0.0) for r in rows]
    lo = [max(0.0, m - float(r.get(k_lo) or m)) for m, r in zip(med, rows)]
    hi = [max(0.0, float(r.get(k_hi) or m) - m) for m, r in zip(med, rows)]
    return med, [lo, hi]


def plot_results(results: Sequence[dict[str, Any]], out_dir: Path, title: str) -> list[Path]:
    """τ, tokens/s and speedup vs budget per policy (median, p10-p90 error bars), and the
    acceptance-length histograms (PNG). Budgets are labelled as plain numbers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, NullLocator

    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    spec = [r for r in results if r["policy"] != "ar"]
    ar = next((r for r in results if r["policy"] == "ar"), None)
    policies = sorted({r["policy"] for r in spec})
    budgets = sorted({r["budget"] for r in spec})
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.8))
    for pol in policies:
        rows = sorted((r for r in spec if r["policy"] == pol), key=lambda r: r["budget"])
        xs = [r["budget"] for r in rows]
        axes[0].plot(xs, [r["tau"] for r in rows], marker="o", label=pol)
        for ax, what in ((axes[1], "tokens_per_s"), (axes[2], "speedup")):
            med, err = _errors(rows, what)
            ax.errorbar(xs, med, yerr=err, marker="o", capsize=3, label=pol)
    if ar is not None:
        med, err = _errors([ar], "tokens_per_s")
        axes[1].axhline(med[0], color="gray", lw=0.8, ls="--", label="ar")
        axes[1].axhspan(med[0] - err[0][0], med[0] + err[1][0], color="gray", alpha=0.15)
    axes[2].axhline(1.0, color="gray", lw=0.8, ls="--")
    names = ("τ (tokens per round)", "tokens/s (median, p10-p90)", "speedup over AR")
    for ax, name in zip(axes, names, strict=True):
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_locator(FixedLocator(budgets or [1]))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticklabels([str(b) for b in (budgets or [1])])
        ax.set_xlabel("budget (draft nodes per round)")
        ax.set_ylabel(name)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    p = out_dir / "tau_speedup_vs_budget.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(p)

    fig, ax = plt.subplots(figsize=(9, 4.8))
    n = len(spec)
    width = 0.8 / max(1, n)
    for j, r in enumerate(spec):
        hist = r["accept_hist"]
        total = max(1, sum(hist))
        xs = [k + (j - (n - 1) / 2) * width for k in range(len(hist))]
        ax.bar(xs, [h / total for h in hist], width=width, label=f"{r['policy']} {r['budget']}")
    ax.set_xlabel("accepted draft tokens per round")
    ax.set_ylabel("fraction of rounds")
    ax.set_title(title, fontsize=8)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    p = out_dir / "acceptance_histogram.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(p)
    return paths


def timestamp() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S")
