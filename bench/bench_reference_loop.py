"""Side by side with the published DDTree reference loop (issue 6): per-round time minus forwards.

    python bench/bench_reference_loop.py --reference build/ref/ddtree --models qwen3-8b  # GPU
    python bench/bench_reference_loop.py --reference build/ref/ddtree --tiny   # CPU, both sides
    python bench/bench_reference_loop.py --dry-run --tiny                      # CPU, ours only

The reference is the published DDTree code (``liranringel/ddtree``, Ringel & Romano): a checkout
the user provides with ``--reference PATH``. Nothing of it is copied into this repository; its
top-level modules (``ddtree``, ``dflash``, ``model``) are imported from PATH at run time, and its
files are never modified. It carries its own copy of the DFlash drafter (``model/dflash.py``,
``DFlashDraftModel``), so z-lab/dflash is not needed. Its import-time extras that play no part in
the loop (``datasets`` for its benchmark prompts, ``loguru`` for log lines) are replaced by stub
modules when they are not installed (``--no-stub`` turns that off); the JSON names the stubs.

Both sides run on the same random-weight pair and the same prompts, greedy, without stop tokens:
one HF Qwen3 target object (bf16 on CUDA; the reference runs it with SDPA and its dense additive
tree mask, ours through its adapter's static cache and tree attention) and one random DFlash
drafter: ours (:class:`DFlashDrafter`) is written with ``save_pretrained`` (the published layout)
to a temporary directory and loaded by the reference's ``DFlashDraftModel.from_pretrained``; the
bench checks that every parameter arrived under the same name with the same value. Configs:
``chain`` (their ``dflash_generate`` vs our chain policy) and ``ddtree`` at each budget (their
``ddtree_generate(tree_budget=B)`` vs our ``ddtree`` policy at budget B: equal trees, since a
random drafter accepts almost nothing and every round's tree is full). Sides: ``ref`` (theirs),
``eager`` (ours, ``cuda_graphs=False``) and ``graph`` (ours, graph mode; on CPU its static-buffer
rounds run uncaptured).

Method. Per request the bench stamps the host clock at every round's start (eager sides: the
entry of the drafter call, which opens the round in both loops; graph mode: the round launch),
synchronises the device once at the start of round 2 and once after the request, and times every
model forward in the round loop (target verify; drafter = embedding + drafter layers + LM head on
the draft slots) with CUDA events (synchronous wall clock on CPU), recording only outermost calls
of the wrapped ``forward`` methods (instance attributes set from outside, removed afterwards).
Round 1 (which also projects the whole prompt into the drafter's context) and the prefill are
excluded. Per request: ms/round = (end - start of round 2) / (rounds - 1), forwards ms/round, and
overhead = the difference (everything that is not a model forward: tree build, mask/positions,
acceptance, KV compaction, host syncs, launches). Graph mode's forwards run inside CUDA graphs,
where events cannot be placed: its forward time is the drafter forward plus the target verify on
the same shapes timed alone (as CUDA graphs, as ``bench_graph_round.py`` does). Reported: medians
and p10/p90 over requests (prompts x runs) and over single rounds, and the speedups of our
ms/round and overhead over theirs (target: rounds at equal trees >= 1.3x faster).

Compatibility shims, set from outside as attributes of its modules and only when needed: the
reference crops its ``DynamicCache`` to an absolute length (``crop(start)``), which transformers
5.17 still accepts (deprecated) and 5.18+ rejects; with such a transformers its modules get a
``DynamicCache`` subclass restoring that meaning (the JSON says ``ref_crop_shim``).
The reference's per-stage timers call ``torch.cuda.synchronize()`` about ten times per round;
by default they are replaced by a plain clock while the bench runs (its loop keeps its own
syncs: the top-k copy to the host, the tree walk's ``tolist``), ``--ref-stage-sync`` keeps them.
Its inline C++ KV compaction (``load_inline``, on by default in its benchmark) is enabled on
CUDA unless ``--ref-cpp-compact off``. Acceptance parity: per prompt, the greedy tokens and the
per-round accepted lengths of both sides are compared (identical in fp32 on CPU; in bf16 the two
attention paths may round a near-tie differently, which the JSON shows as a first differing
token). Its loop runs while the committed length is below prompt + max_new, one round more than
emitting max_new tokens needs, as graph mode runs one no-op round after the device decided to
stop (compared over the common rounds; each side's ms/round divides by the rounds it ran). The
reference drops every output token equal to the drafter's mask id (upstream behaviour), so
prompts avoid that id and the comparison skips it.
JSON in bench/results/bench_reference_loop-*.json (stamped, with the reference's commit).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import logging
import os
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_graph_round import (
    CONFIGS,
    Timer,
    build_target,
    chain_verify_fn,
    draft_fn,
    random_tree,
    verify_fn,
)
from bench.common import RESULTS, print_table, stamp, summarize, write_json
from difftree_rt import SpeculativeDecoder
from difftree_rt.engine.runner import span_bucket
from difftree_rt.models import DFlashDrafter
from difftree_rt.models.target import TargetAdapter

#: Files a checkout of liranringel/ddtree holds (what the bench imports from it).
REFERENCE_FILES = (
    "ddtree.py",
    "dflash.py",
    "model/__init__.py",
    "model/dflash.py",
    "model/utils.py",
)
#: Top-level modules of the reference (purged from sys.modules when they come from elsewhere).
REFERENCE_MODULES = ("ddtree", "dflash", "model", "model.dflash", "model.utils", "distributed")
#: Import-time dependencies of the reference that its decoding loop never uses.
STUBBABLE = ("datasets", "loguru")
SIDES = ("ref", "eager", "graph")
#: ``--models`` name of the shipped trained pair (assets/reference_pair or $DIFFTREE_RT_PAIR).
PAIR_NAME = "reference-pair"


class ReferenceUnavailable(RuntimeError):
    """The reference checkout is missing, incomplete or cannot be imported (message says why)."""


# ---------------------------------------------------------------------------------------------
# The reference: found, imported from the user's path
# ---------------------------------------------------------------------------------------------
@dataclass
class Reference:
    path: Path
    ddtree: types.ModuleType
    dflash: types.ModuleType
    draft_model_cls: type
    commit: str
    stubs: list[str] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        return {"path": str(self.path), "commit": self.commit, "stubbed_modules": self.stubs}


def _stub_module(name: str) -> types.ModuleType:
    """A placeholder for an import-time dependency the reference's loop never calls."""
    mod = types.ModuleType(name)
    mod.__dict__["__difftree_stub__"] = True
    if name == "loguru":
        mod.__dict__["logger"] = logging.getLogger("ddtree_reference")
    elif name == "datasets":

        def unavailable(*_a: Any, **_k: Any) -> Any:
            raise RuntimeError("datasets is stubbed by bench_reference_loop (not installed)")

        for attr in ("load_dataset", "Features", "Sequence", "Value"):
            mod.__dict__[attr] = unavailable
    return mod


def _git_commit(path: Path) -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True
        )
    except OSError:
        return "unknown (git not found)"
    return out.stdout.strip() if out.returncode == 0 else "unknown (not a git checkout)"


def load_reference(path: str | os.PathLike[str], stub_missing: bool = True) -> Reference:
    """Import the published DDTree loop from a checkout at ``path``.

    Raises:
        ReferenceUnavailable: the path is missing or not a checkout of liranringel/ddtree, or
            importing it failed (the message names the missing module or symbol).
    """
    root = Path(path).expanduser().resolve()
    if not root.exists():
        raise ReferenceUnavailable(
            f"--reference {path}: no such directory (give the path of a checkout of "
            "https://github.com/liranringel/ddtree; see docs/GPU_CHECKLIST.md, issue 6)"
        )
    if not root.is_dir():
        raise ReferenceUnavailable(f"--reference {path}: not a directory")
    missing = [f for f in REFERENCE_FILES if not (root / f).is_file()]
    if missing:
        raise ReferenceUnavailable(
            f"--reference {path} does not look like a checkout of liranringel/ddtree: "
            f"missing {', '.join(missing)}"
        )
    for name in REFERENCE_MODULES:  # a same-named module from elsewhere must not shadow theirs
        mod = sys.modules.get(name)
        origin = getattr(mod, "__file__", None) if mod is not None else None
        if mod is not None and (origin is None or root not in Path(origin).resolve().parents):
            del sys.modules[name]
    stubs = []
    for name in STUBBABLE:
        present = name in sys.modules or importlib.util.find_spec(name) is not None
        if not present and stub_missing:
            sys.modules[name] = _stub_module(name)
            stubs.append(name)
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    try:
        ddtree = importlib.import_module("ddtree")
        dflash = importlib.import_module("dflash")
        model = importlib.import_module("model")
    except ModuleNotFoundError as e:
        hint = " (or drop --no-stub)" if e.name in STUBBABLE else ""
        raise ReferenceUnavailable(
            f"importing the DDTree reference from {root} failed: module {e.name!r} is missing; "
            f"install it{hint}"
        ) from e
    except ImportError as e:
        import transformers

        raise ReferenceUnavailable(
            f"importing the DDTree reference from {root} failed: {e} (transformers "
            f"{transformers.__version__}, torch {torch.__version__})"
        ) from e
    for mod, attr in ((ddtree, "ddtree_generate"), (dflash, "dflash_generate"),
                      (model, "DFlashDraftModel")):  # fmt: skip
        if not hasattr(mod, attr):
            raise ReferenceUnavailable(
                f"the reference at {root} has no {mod.__name__}.{attr} (a different version of "
                "liranringel/ddtree?)"
            )
    return Reference(root, ddtree, dflash, model.DFlashDraftModel, _git_commit(root), stubs)


def load_reference_drafter(ref: Reference, drafter: DFlashDrafter, workdir: str) -> Any:
    """Our drafter written in the published layout, loaded by the reference's class; every
    parameter is checked to arrive under the same name with the same value."""
    path = os.path.join(workdir, "drafter")
    drafter.save_pretrained(path)
    model, info = ref.draft_model_cls.from_pretrained(
        path,
        dtype=drafter.dtype,
        attn_implementation="sdpa",
        output_loading_info=True,
        use_safetensors=True,
    )
    model = model.to(drafter.device).eval()
    problems = {k: v for k, v in info.items() if v and k != "error_msgs"}
    if info.get("error_msgs"):
        problems["error_msgs"] = info["error_msgs"]
    ours = drafter.state_dict()
    theirs = model.state_dict()
    absent = sorted(set(ours) - set(theirs))
    differ = sorted(k for k in set(ours) & set(theirs) if not torch.equal(ours[k], theirs[k]))
    if problems or absent or differ:
        raise RuntimeError(
            f"the reference drafter did not load our checkpoint faithfully: loading info "
            f"{problems}, absent {absent}, different {differ}"
        )
    for name, ours_v, theirs_v in (
        ("block_size", drafter.block_size, model.block_size),
        ("mask_token_id", drafter.mask_token_id, model.mask_token_id),
        ("target_layer_ids", drafter.target_layer_ids, list(model.target_layer_ids)),
    ):
        if ours_v != theirs_v:
            raise RuntimeError(f"reference drafter {name} = {theirs_v}, ours = {ours_v}")
    return model


# ---------------------------------------------------------------------------------------------
# Timing from outside: round starts and forward intervals
# ---------------------------------------------------------------------------------------------
class RoundClock:
    """Host stamps at round starts and device intervals of the outermost wrapped forwards.

    ``wrap(obj, "forward", kind, starts_round)`` sets an instance attribute that times the call
    (only when no other wrapped call is running) and removes it again on :meth:`restore`.
    """

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self._depth = 0
        self._restore: list[Callable[[], None]] = []
        self.reset()

    def reset(self) -> None:
        self.starts: list[float] = []
        self.intervals: list[tuple[int, str, Any, Any]] = []  # (round, kind, start, end)
        self.end = 0.0

    def _now(self) -> Any:
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            return ev
        return time.perf_counter()

    def round_start(self) -> None:
        if len(self.starts) == 1:  # round 2 opens the timed window: start from an idle device
            self.sync()
        self.starts.append(time.perf_counter())

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def finish(self) -> None:
        self.sync()
        self.end = time.perf_counter()

    def wrap(self, obj: Any, attr: str, kind: str | None, starts_round: bool = False) -> None:
        had_own = attr in vars(obj)
        original = getattr(obj, attr)
        clock = self

        def timed(*args: Any, **kwargs: Any) -> Any:
            outer = clock._depth == 0
            if outer and starts_round:
                clock.round_start()
            if not outer or kind is None:
                return original(*args, **kwargs)
            clock._depth += 1
            t0 = clock._now()
            try:
                return original(*args, **kwargs)
            finally:
                clock._depth -= 1
                clock.intervals.append((len(clock.starts) - 1, kind, t0, clock._now()))

        setattr(obj, attr, timed)

        def undo() -> None:
            if had_own:
                setattr(obj, attr, original)
            else:
                delattr(obj, attr)

        self._restore.append(undo)

    def on_restore(self, undo: Callable[[], None]) -> None:
        self._restore.append(undo)

    def restore(self) -> None:
        while self._restore:
            self._restore.pop()()

    def request(self) -> dict[str, Any]:
        """Per-round times of the request just finished (rounds 2..R), in ms."""
        rounds = len(self.starts)
        bounds = [*self.starts, self.end]
        fwd = [0.0] * rounds
        for r, _kind, t0, t1 in self.intervals:
            if r >= 0:
                fwd[r] += t0.elapsed_time(t1) if self.cuda else 1e3 * (t1 - t0)
        round_ms = [1e3 * (bounds[i + 1] - bounds[i]) for i in range(rounds)]
        timed = range(1, rounds)
        window = 1e3 * (self.end - self.starts[1]) if rounds > 1 else 0.0
        n = max(rounds - 1, 1)
        return {
            "rounds": rounds,
            "decode_ms": window,
            "ms_per_round": window / n,
            "forward_ms_per_round": sum(fwd[i] for i in timed) / n,
            "round_samples": [round_ms[i] for i in timed],
            "forward_samples": [fwd[i] for i in timed],
        }


def crop_shim_needed() -> bool:
    """Whether this transformers rejects ``DynamicCache.crop(n)`` with ``n > 0``.

    The reference crops to an absolute length (``crop(start)``): deprecated in transformers
    5.17 (still works there, with a warning) and an error from 5.18 on.
    """
    from transformers import DynamicCache

    cache = DynamicCache()
    kv = torch.zeros(1, 1, 2, 1)
    cache.update(kv, kv, 0)
    try:
        cache.crop(1)
    except ValueError:
        return True
    return cache.get_seq_length() != 1


def legacy_crop_cache() -> type:
    """``DynamicCache`` whose ``crop(n > 0)`` keeps the first n rows (what the reference was
    written against: transformers <= 5.17), handed to the reference's modules by name."""
    from transformers import DynamicCache

    class LegacyCropDynamicCache(DynamicCache):
        def crop(self, tokens_to_remove: int) -> None:
            if tokens_to_remove > 0:  # an absolute length, as in transformers <= 5.17
                length = self.get_seq_length()
                if tokens_to_remove >= length:
                    return
                tokens_to_remove = tokens_to_remove - length
            super().crop(tokens_to_remove)

    return LegacyCropDynamicCache


@contextlib.contextmanager
def ref_loop_patches(
    ref: Reference, stage_sync: bool, cpp_compact: bool, crop_shim: bool
) -> Iterator[None]:
    """The reference's module-level knobs for one run (attributes of its modules, set from
    outside), restored afterwards: stage timers, C++ compaction, the crop shim."""
    mods = (ref.ddtree, ref.dflash)
    saved = [(m, m.cuda_time, m.DynamicCache) for m in mods]
    saved_compact = ref.ddtree._CPP_COMPACT_ENABLED
    if not stage_sync or not torch.cuda.is_available():
        for m in mods:
            m.cuda_time = time.perf_counter
    if crop_shim:
        shim = legacy_crop_cache()
        for m in mods:
            m.DynamicCache = shim
    ref.ddtree.maybe_enable_cpp_compact(cpp_compact)
    try:
        yield
    finally:
        for m, clock, cache_cls in saved:
            m.cuda_time, m.DynamicCache = clock, cache_cls
        ref.ddtree._CPP_COMPACT_ENABLED = saved_compact


# ---------------------------------------------------------------------------------------------
# One config, three sides
# ---------------------------------------------------------------------------------------------
def _first_diff(a: list[int], b: list[int]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def _side_summary(reqs: list[dict[str, Any]], forward_ms: float | None) -> dict[str, Any]:
    """Medians/spreads over requests and single rounds; ``forward_ms`` overrides the in-loop
    forward time (graph mode: forwards timed alone)."""
    per_round = [r["ms_per_round"] for r in reqs]
    if forward_ms is None:
        fwd = [r["forward_ms_per_round"] for r in reqs]
        rounds = [x for r in reqs for x in r["round_samples"]]
        over = [x - f for r in reqs for x, f in zip(r["round_samples"], r["forward_samples"])]
    else:
        fwd = [forward_ms] * len(reqs)
        rounds = [x for r in reqs for x in r["round_samples"]]
        over = [x - forward_ms for x in rounds]
    overhead = [m - f for m, f in zip(per_round, fwd)]
    return {
        "requests": len(reqs),
        "rounds": sum(r["rounds"] for r in reqs),
        "tau": sum(r["tau"] for r in reqs) / len(reqs),
        "ms_per_round": summarize(per_round),
        "decode_ms": summarize([r["decode_ms"] for r in reqs]),
        "forward_ms_per_round": summarize(fwd),
        "overhead_ms_per_round": summarize(overhead),
        "overhead_frac": summarize([o / m for o, m in zip(overhead, per_round) if m > 0] or [0.0]),
        "single_round_ms": summarize(rounds or [0.0]),
        "single_round_overhead_ms": summarize(over or [0.0]),
        "forward_source": "in-loop events" if forward_ms is None else "standalone (alone, graphs)",
    }


def run_config(
    policy: str,
    budget: int,
    sides: list[str],
    target: torch.nn.Module,
    drafter: DFlashDrafter,
    ref: Reference | None,
    ref_drafter: Any,
    prompts: list[torch.Tensor],
    args: argparse.Namespace,
    timer: Timer,
) -> dict[str, Any]:
    cuda = args.device.startswith("cuda")
    new, block = args.max_new_tokens, args.block_size
    length = args.prompt_len + new + max(budget, block) + 1
    mask_id = drafter.mask_token_id
    out: dict[str, Any] = {"policy": policy, "budget": budget, "sides": {}}
    tokens: dict[str, list[list[int]]] = {}
    accepts: dict[str, list[list[int]]] = {}

    for side in sides:
        clock = RoundClock(cuda)
        reqs: list[dict[str, Any]] = []
        side_tokens: list[list[int]] = []
        side_accepts: list[list[int]] = []
        if side == "ref":
            assert ref is not None and ref_drafter is not None
            generate = (
                ref.ddtree.ddtree_generate if policy == "ddtree" else ref.dflash.dflash_generate
            )
            extra = {"tree_budget": budget} if policy == "ddtree" else {}

            def call(p: torch.Tensor) -> tuple[list[int], list[int], float]:
                res = generate(
                    model=ref_drafter, target=target, input_ids=p, mask_token_id=mask_id,
                    max_new_tokens=new, block_size=block, stop_token_ids=None,
                    temperature=0.0, **extra,
                )  # fmt: skip
                acc = [int(a) - 1 for a in res.acceptance_lengths]  # theirs count the bonus
                kept = int((p != mask_id).sum())  # they drop mask-id tokens, prompt included
                toks = res.output_ids[0, kept:].tolist()
                return toks, acc, 1.0 + sum(acc) / max(len(acc), 1)

            attn = target.config._attn_implementation
            target.config._attn_implementation = "sdpa"  # as their benchmark runs DDTree
            clock.on_restore(lambda: setattr(target.config, "_attn_implementation", attn))
            clock.wrap(target, "forward", "verify")
            clock.wrap(target.model.embed_tokens, "forward", "draft", starts_round=True)
            clock.wrap(target.lm_head, "forward", "draft")
            clock.wrap(ref_drafter, "forward", "draft")
            ctx: Any = ref_loop_patches(
                ref, args.ref_stage_sync, args.ref_cpp_compact, args.crop_shim
            )
        else:
            dec = SpeculativeDecoder(
                target, drafter, policy, budget, max_length=length, profile=False,
                cuda_graphs=side == "graph",
            )  # fmt: skip

            def call(p: torch.Tensor) -> tuple[list[int], list[int], float]:
                res = dec.generate(p, new)
                toks = res.sequences[0, p.shape[1] :].tolist()
                return toks, list(res.stats.accepted_lengths), res.stats.tau

            call(prompts[0])  # warm-up (graph capture, allocations) before any wrapper
            if side == "graph":
                clock.wrap(dec._graph_runner, "_run_round", None, starts_round=True)
            else:
                clock.wrap(target, "forward", "verify")
                clock.wrap(drafter, "draft", "draft", starts_round=True)
            ctx = contextlib.nullcontext()
        try:
            with ctx:
                if side == "ref":
                    call(prompts[0])  # warm-up
                for run in range(args.runs):
                    for p in prompts:
                        clock.reset()
                        toks, acc, tau = call(p)
                        clock.finish()
                        req = clock.request()
                        req["tau"] = tau
                        reqs.append(req)
                        if run == 0:
                            side_tokens.append(toks)
                            side_accepts.append(acc)
        finally:
            clock.restore()
        forward_ms = None
        if side == "graph":
            forward_ms = standalone_forwards_ms(policy, budget, target, drafter, args, timer)
        out["sides"][side] = _side_summary(reqs, forward_ms)
        out["sides"][side]["accepted_lengths_first_run"] = side_accepts
        tokens[side], accepts[side] = side_tokens, side_accepts
        if side != "ref":
            del dec
        if cuda:
            torch.cuda.empty_cache()

    # Acceptance parity: every side against the first one run (tokens equal to the drafter's
    # mask id are dropped by the reference, so they are skipped in the comparison).
    base = sides[0]
    parity = {}
    for side in sides[1:]:
        rows = []
        for i, (a, b) in enumerate(zip(tokens[base], tokens[side])):
            # Common rounds except the last: our walk caps the final path at max_new (theirs
            # accepts it whole, then truncates), and the reference loops one round more.
            n = min(len(accepts[base][i]), len(accepts[side][i])) - 1
            a2, b2 = [t for t in a if t != mask_id], [t for t in b if t != mask_id]
            rows.append({
                "prompt": i,
                "tokens_equal": a2 == b2,
                "first_diff": _first_diff(a2, b2),
                "accepted_equal": accepts[base][i][:n] == accepts[side][i][:n],
                "rounds": [len(accepts[base][i]), len(accepts[side][i])],
                "mask_tokens_skipped": len(a) - len(a2) + len(b) - len(b2),
            })  # fmt: skip
        parity[f"{side}_vs_{base}"] = rows
    out["parity"] = parity
    if "ref" in out["sides"]:
        theirs = out["sides"]["ref"]
        for side in ("eager", "graph"):
            if side in out["sides"]:
                ours = out["sides"][side]
                out[f"speedup_{side}"] = {
                    "round": _ratio(theirs["ms_per_round"], ours["ms_per_round"]),
                    "overhead": _ratio(
                        theirs["overhead_ms_per_round"], ours["overhead_ms_per_round"]
                    ),
                }
    return out


def _ratio(theirs: dict[str, float], ours: dict[str, float]) -> float | None:
    return theirs["median"] / ours["median"] if ours["median"] > 0 else None


def standalone_forwards_ms(
    policy: str,
    budget: int,
    target: torch.nn.Module,
    drafter: DFlashDrafter,
    args: argparse.Namespace,
    timer: Timer,
) -> float:
    """Drafter forward + target verify on a round's shapes at the mean context, each timed
    alone (CUDA graphs on a GPU), over graph mode's key span there (ms)."""
    ctx = args.prompt_len + args.max_new_tokens // 2  # the mean context of a request
    span = span_bucket(ctx + args.block_size, 1 << 30)  # the key span graph mode uses there
    adapter = TargetAdapter(
        target, max_length=max(span, ctx + budget + 2),
        feature_layers=drafter.target_layer_ids, validate=False,
    )  # fmt: skip
    adapter.cache.base_len.fill_(ctx)
    adapter.cache.set_fixed_span(span)
    if policy == "chain":
        t_verify = timer(chain_verify_fn(adapter, args.block_size - 1))
    else:
        tree = random_tree(target.config.vocab_size, args.block_size - 1, budget, args.device, 0)
        t_verify = timer(verify_fn(adapter, tree))
    t_draft = timer(draft_fn(drafter, ctx))
    return (t_verify["median"] + t_draft["median"]) / 1e3


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------
@torch.inference_mode()
def bench_model(
    name: str, args: argparse.Namespace, ref: Reference | None, timer: Timer
) -> dict[str, Any]:
    args = argparse.Namespace(**vars(args))  # the shipped pair sets its own shapes below
    dtype = getattr(torch, args.dtype)
    t0 = time.perf_counter()
    shipped = None
    if name == PAIR_NAME:  # the shipped trained pair: real acceptance, for the parity check
        from difftree_rt.cli.pair import default_pair_dir, encode, load_pair, load_prompts

        pair_dir = default_pair_dir()
        pair = load_pair(pair_dir / "target", pair_dir / "drafter", args.device, args.dtype)
        target, drafter = pair.target, pair.drafter
        texts = load_prompts(pair_dir / "prompts.json")[: args.prompts]
        shipped = [encode(pair, t, args.device) for t in texts]
        args.block_size = drafter.block_size
        args.prompt_len = max(p.shape[1] for p in shipped)
    else:
        target = build_target(name, dtype, args.device, args.seed)
        gen = torch.Generator(device=args.device).manual_seed(args.seed)
        drafter = DFlashDrafter.for_target(
            target, num_layers=args.drafter_layers, block_size=args.block_size, generator=gen
        )
    ref_drafter = None
    with tempfile.TemporaryDirectory(prefix="difftree-refloop-") as tmp:
        if ref is not None:
            ref_drafter = load_reference_drafter(ref, drafter, tmp)
    build_s = time.perf_counter() - t0
    vocab = target.config.vocab_size
    gen_cpu = torch.Generator().manual_seed(args.seed)
    # Prompt ids avoid the drafter's mask id (the reference strips that id from its output).
    prompts = shipped or []
    for _ in range(0 if shipped else args.prompts):
        p = torch.randint(0, vocab - 1, (1, args.prompt_len), generator=gen_cpu)
        p[p >= drafter.mask_token_id] += 1
        prompts.append(p.to(args.device))
    sides = [s for s in args.sides if s != "ref" or ref is not None]
    configs = [("chain", args.block_size - 1)] if args.chain else []
    configs += [("ddtree", b) for b in args.budgets]
    runs = [
        run_config(pol, b, sides, target, drafter, ref, ref_drafter, prompts, args, timer)
        for pol, b in configs
    ]
    out = {
        "model": "reference pair (trained)" if shipped else f"{name} (random weights)",
        "prompt_len": args.prompt_len,
        "block_size": args.block_size,
        "vocab": vocab,
        "build_s": build_s,
        "sides": sides,
        "runs": runs,
    }
    del target, drafter, ref_drafter
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
    return out


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--reference", metavar="PATH",
                    help="a checkout of https://github.com/liranringel/ddtree (required unless "
                         "--dry-run)")  # fmt: skip
    ap.add_argument("--dry-run", action="store_true",
                    help="our side only (no reference): checks arguments and our loop")  # fmt: skip
    ap.add_argument("--tiny", action="store_true", help="CPU smoke test: tiny model, few rounds")
    ap.add_argument("--models", nargs="+", default=["qwen3-8b"],
                    choices=[*sorted(CONFIGS), PAIR_NAME],
                    help=f"random-weight Qwen3 shapes; {PAIR_NAME}: the shipped trained pair "
                         "(assets/reference_pair, its prompts: real acceptance)")  # fmt: skip
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, help="default bfloat16 on CUDA, float32 on CPU")
    ap.add_argument("--sides", nargs="+", default=list(SIDES), choices=SIDES)
    ap.add_argument("--drafter-layers", type=int, default=1)
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--budgets", nargs="+", type=int, default=[16, 64, 256], help="ddtree")
    ap.add_argument("--no-chain", dest="chain", action="store_false",
                    help="skip the chain config (their dflash_generate vs our chain)")  # fmt: skip
    ap.add_argument("--prompts", type=int, default=2, help="random prompts per config")
    ap.add_argument("--prompt-len", type=int, default=256)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--runs", type=int, default=2, help="timed passes over the prompts")
    ap.add_argument("--ref-stage-sync", action="store_true",
                    help="keep the reference's per-stage cuda.synchronize timers")  # fmt: skip
    ap.add_argument("--ref-cpp-compact", choices=("auto", "on", "off"), default="auto",
                    help="the reference's inline C++ KV compaction (auto: CUDA)")  # fmt: skip
    ap.add_argument("--no-stub", dest="stub", action="store_false",
                    help="no stubs for the reference's unused imports")  # fmt: skip
    ap.add_argument("--repeats", type=int, default=10, help="timer samples (graph forwards)")
    ap.add_argument("--inner", type=int, default=5, help="calls per CUDA graph sample")
    ap.add_argument("--out-dir", default=str(RESULTS))
    ap.add_argument("--seed", type=int, default=0)
    return ap


def main(argv: list[str] | None = None) -> Path:
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.tiny:
        args.models = [PAIR_NAME] if args.models == [PAIR_NAME] else ["tiny"]
        args.device = "cpu"
        args.budgets, args.prompt_len, args.max_new_tokens = [8], 16, 12
        args.block_size, args.repeats, args.runs, args.prompts = 8, 2, 1, 2
        torch.set_num_threads(1)
    if args.dtype is None:
        args.dtype = "bfloat16" if args.device.startswith("cuda") else "float32"
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error(f"--device {args.device}: CUDA is not available (use --device cpu or --tiny)")
    if any(b < 1 for b in args.budgets) or args.block_size < 2 or args.prompts < 1:
        ap.error("--budgets must be >= 1, --block-size >= 2, --prompts >= 1")
    if not args.sides:
        ap.error("--sides: name at least one of " + ", ".join(SIDES))
    if args.ref_cpp_compact == "auto":
        args.ref_cpp_compact = args.device.startswith("cuda")
    else:
        args.ref_cpp_compact = args.ref_cpp_compact == "on"
    ref = None
    if args.dry_run:
        args.sides = [s for s in args.sides if s != "ref"] or ["eager"]
    else:
        if "ref" not in args.sides:
            ap.error("--sides without 'ref' needs --dry-run (there is nothing to compare with)")
        if not args.reference:
            ap.error("--reference PATH is required (a checkout of liranringel/ddtree), or "
                     "--dry-run to run our side alone")  # fmt: skip
        try:
            ref = load_reference(args.reference, stub_missing=args.stub)
        except ReferenceUnavailable as e:
            ap.error(str(e))
    args.crop_shim = ref is not None and crop_shim_needed()
    timer = Timer(args.device, args.repeats, args.inner)
    models = [bench_model(name, args, ref, timer) for name in args.models]
    report(models, args, ref)
    payload = {
        "stamp": stamp(args.device),
        "reference": ref.describe() if ref is not None else None,
        "ref_stage_sync": args.ref_stage_sync,
        "ref_cpp_compact": args.ref_cpp_compact,
        "ref_crop_shim": args.crop_shim,
        "args": vars(args),
        "models": models,
    }
    if ref is not None:
        payload["reference"]["cpp_compact_loaded"] = bool(
            args.ref_cpp_compact and ref.ddtree.load_cpp_compact_module() is not None
        )
    path = write_json("bench_reference_loop", payload, Path(args.out_dir))
    print("wrote", path)
    return path


def report(models: list[dict[str, Any]], args: argparse.Namespace, ref: Reference | None) -> None:
    print(f"device {args.device}, dtype {args.dtype}, prompt {args.prompt_len}, "
          f"{args.max_new_tokens} new tokens, {args.prompts} prompts x {args.runs} runs, "
          f"greedy, no stop tokens; ms/round, forward, overhead: medians over requests, "
          f"p10/p90: single rounds")  # fmt: skip
    if ref is not None:
        stubs = f", stubbed: {', '.join(ref.stubs)}" if ref.stubs else ""
        print(f"reference {ref.path} @ {ref.commit[:12]}{stubs}; stage syncs "
              f"{'kept' if args.ref_stage_sync else 'removed'}, C++ compaction "
              f"{'on' if args.ref_cpp_compact else 'off'}")  # fmt: skip
    headers = ["model", "policy", "budget", "side", "tau", "ms/round", "p10", "p90",
               "forward ms", "overhead ms", "overhead %", "parity"]  # fmt: skip
    rows = []
    for m in models:
        for r in m["runs"]:
            for side, s in r["sides"].items():
                par = r["parity"].get(f"{side}_vs_{m['sides'][0]}")
                ok = (
                    "-"
                    if par is None
                    else (
                        "same"
                        if all(p["tokens_equal"] and p["accepted_equal"] for p in par)
                        else "DIFF"
                    )
                )
                rows.append([
                    m["model"], r["policy"], r["budget"], side, f"{s['tau']:.2f}",
                    f"{s['ms_per_round']['median']:.3f}", f"{s['single_round_ms']['p10']:.3f}",
                    f"{s['single_round_ms']['p90']:.3f}",
                    f"{s['forward_ms_per_round']['median']:.3f}",
                    f"{s['overhead_ms_per_round']['median']:.3f}",
                    f"{100 * s['overhead_frac']['median']:.1f}", ok,
                ])  # fmt: skip
    print_table(headers, rows)
    for m in models:
        for r in m["runs"]:
            for side in ("eager", "graph"):
                sp = r.get(f"speedup_{side}")
                if sp is None:
                    continue
                fmt = lambda x: "n/a" if x is None else f"{x:.2f}x"  # noqa: E731
                print(
                    f"{m['model']} {r['policy']}/{r['budget']}: ours ({side}) vs reference: "
                    f"round {fmt(sp['round'])} faster, overhead {fmt(sp['overhead'])} smaller"
                )


if __name__ == "__main__":
    main()
