"""The subprocess side of ``difftree-rt bench --baseline``: one version of difftree_rt timing
(policy, budget) settings on request.

Run as a script, never imported by the package: ``python bench_worker.py [CHECKOUT]``. With
CHECKOUT (a source checkout: ``CHECKOUT/python/difftree_rt`` and its built extension) it imports
that checkout's package and compiled core instead of the installed ones; without, whatever the
interpreter imports. Because the script is run against *other* versions of the package, it is
stand-alone (standard library, torch, transformers and difftree_rt's public API only: the
``SpeculativeDecoder`` constructor, ``generate``, the ``stats`` fields, ``DFlashDrafter``) and
tolerant of what a version lacks. Models load and decoders are built as the plain bench does
(``load_pair``, ``run_config``), so the numbers compare with it.

Protocol: one JSON object per line on stdin, one JSON reply per line on stdout (nothing is
unpickled or evaluated). Requests:

- ``{"cmd": "load", "target", "drafter", "vp_drafter", "device", "dtype", "threads"}`` ->
  ``{"ok": true, "info": {...}}`` (where the package and extension were imported from, versions,
  parameter counts).
- ``{"cmd": "run", "policy", "budget", "prompts": [[ids]], "max_new_tokens", "stop",
  "cuda_graphs"}`` -> ``{"ok": true, "result": {...}}``: one untimed warm-up generation of the
  first prompt (at most 8 tokens), then every prompt greedily; totals over the prompts.
- ``{"cmd": "quit"}``.

A failed request is ``{"ok": false, "error": "...", "traceback": "..."}``.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import sys
from pathlib import Path
from typing import Any, TextIO


def find_extension(checkout: Path) -> Path | None:
    """The checkout's compiled core for this interpreter: ``python/difftree_rt/_C*`` (an
    in-place build), else one under ``build/`` (scikit-build-core's build directory)."""
    from importlib.machinery import EXTENSION_SUFFIXES

    pkg = checkout / "python" / "difftree_rt"
    for suffix in EXTENSION_SUFFIXES:
        found = sorted(pkg.glob(f"_C{suffix}"))
        if found:
            return found[0]
    build = checkout / "build"
    for suffix in EXTENSION_SUFFIXES:
        found = sorted(build.glob(f"*/_C{suffix}"))
        if found:
            return max(found, key=lambda p: p.stat().st_mtime)
    return None


def import_checkout(checkout: Path) -> None:
    """Make ``import difftree_rt`` load ``checkout``'s package and compiled core.

    Its ``python/`` goes first on ``sys.path``; import hooks that would redirect difftree_rt
    elsewhere (an editable install's finder) are dropped; the extension is loaded from the
    checkout and registered as ``difftree_rt._C`` before the package imports it.
    """
    import importlib.util
    from importlib.machinery import PathFinder

    src = checkout / "python"
    sys.path.insert(0, str(src))
    keep = []
    for finder in sys.meta_path:
        spec = None
        if finder is not PathFinder:  # the sys.path search, which now finds src first
            try:
                spec = finder.find_spec("difftree_rt", None)  # type: ignore[call-arg]
            except Exception:  # a finder that cannot answer is left alone
                spec = None
        if spec is None:
            keep.append(finder)
    sys.meta_path[:] = keep
    so = find_extension(checkout)
    if so is None:
        raise ImportError(f"{checkout}: no built extension (python/difftree_rt/_C*.so)")
    spec = importlib.util.spec_from_file_location("difftree_rt._C", so)
    if spec is None or spec.loader is None:
        raise ImportError(f"{so} is not a loadable extension module")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules["difftree_rt._C"] = module


class Worker:
    """Holds the loaded target and drafters between requests."""

    def __init__(self) -> None:
        self.target: Any = None
        self.drafter: Any = None
        self.vp_drafter: Any = None

    def load(self, req: dict[str, Any]) -> dict[str, Any]:
        """Load the models as ``cli/pair.py``'s ``load_pair`` does (safetensors only)."""
        import torch
        from transformers import AutoModelForCausalLM

        import difftree_rt
        from difftree_rt.models import DFlashDrafter

        if req.get("threads"):
            torch.set_num_threads(int(req["threads"]))
        device = req["device"]
        dtype = getattr(torch, req["dtype"])
        target = AutoModelForCausalLM.from_pretrained(
            req["target"], dtype=dtype, local_files_only=True, use_safetensors=True
        )
        self.target = target.to(device).eval()
        self.drafter = DFlashDrafter.from_pretrained(req["drafter"]).to(device=device, dtype=dtype)
        if req.get("vp_drafter"):
            vp = DFlashDrafter.from_pretrained(req["vp_drafter"])
            self.vp_drafter = vp.to(device=device, dtype=dtype)
        try:  # which compiled core this side runs (some versions import it lazily)
            ext: Any = importlib.import_module("difftree_rt._C")
        except ImportError:
            ext = None
        info: dict[str, Any] = {
            "package": str(Path(difftree_rt.__file__).resolve().parent),
            "extension": getattr(ext, "__file__", None),
            "version": getattr(difftree_rt, "__version__", None),
            "torch": torch.__version__,
            "python": sys.version.split()[0],
            "threads": torch.get_num_threads(),
            "target": _describe(self.target),
            "drafter": _describe(self.drafter),
            "block_size": getattr(self.drafter, "block_size", None),
        }
        try:
            from difftree_rt.info import build_info

            full = build_info()
            keep = ("git_sha", "cuda_compiled", "torch_cuda_available")
            info.update({k: full.get(k) for k in keep if k in full})
            info["build_git_sha"] = info.pop("git_sha", None)
        except Exception as exc:  # older builds: what is known above is enough
            info["build_info_error"] = str(exc)
        try:
            import transformers

            info["transformers"] = transformers.__version__
        except ImportError:
            pass
        return {"info": info}

    def decoder(self, policy: str, budget: int, cuda_graphs: bool | None) -> Any:
        """A decoder as ``cli/pair.py``'s ``run_config`` builds one (d2sd with the second
        drafter when one was loaded)."""
        from difftree_rt import SpeculativeDecoder

        kwargs: dict[str, Any] = {}
        params = inspect.signature(SpeculativeDecoder.__init__).parameters
        if cuda_graphs is not None and "cuda_graphs" in params:
            kwargs["cuda_graphs"] = cuda_graphs
        chosen: Any = policy
        if policy == "d2sd" and self.vp_drafter is not None:
            from difftree_rt.policies import D2SDPolicy

            chosen = D2SDPolicy(max(1, budget), vp_drafter=self.vp_drafter)
        drafter = self.drafter if policy != "ar" else None
        return SpeculativeDecoder(self.target, drafter, chosen, budget=max(1, budget), **kwargs)

    def run(self, req: dict[str, Any]) -> dict[str, Any]:
        import torch

        policy, budget = str(req["policy"]), int(req["budget"])
        max_new = int(req["max_new_tokens"])
        dec = self.decoder(policy, budget, req.get("cuda_graphs"))
        device = next(self.target.parameters()).device
        prompts = [torch.tensor([ids], dtype=torch.long, device=device) for ids in req["prompts"]]
        stop = req.get("stop") or None
        depth = int(self.drafter.block_size) - 1 if hasattr(self.drafter, "block_size") else 0
        hist = [0] * (depth + 1)
        res: dict[str, Any] = dict(tokens=0, rounds=0, accepted=0, total_s=0.0, prefill_s=0.0)
        phases: dict[str, float] = {}
        outputs: list[list[int]] = []
        dec.generate(prompts[0], min(8, max_new))  # warm-up, untimed
        for ids in prompts:
            out = dec.generate(ids, max_new, stop_token_ids=stop)
            s = out.stats
            accepted = [int(a) for a in s.accepted_lengths]
            res["tokens"] += int(s.new_tokens)
            res["rounds"] += int(s.rounds)
            res["accepted"] += sum(accepted)
            res["total_s"] += float(s.total_time)
            res["prefill_s"] += float(s.phase_time.get("prefill", 0.0))
            for k, v in s.phase_time.items():
                phases[k] = phases.get(k, 0.0) + float(v)
            if policy != "ar":
                for a in accepted:
                    hist[min(a, depth)] += 1
            outputs.append([int(t) for t in out.sequences[0, ids.shape[1] :].tolist()])
        res.update(phase_s=phases, accept_hist=hist, outputs=outputs)
        return {"result": res}


def _describe(module: Any) -> dict[str, Any] | None:
    if module is None or not hasattr(module, "parameters"):
        return None
    n = sum(t.numel() for t in module.parameters())
    kind = getattr(getattr(module, "config", None), "model_type", None) or type(module).__name__
    return {"params": int(n), "kind": str(kind)}


def serve(inp: TextIO, out: TextIO) -> None:
    worker = Worker()
    for line in inp:
        if not line.strip():
            continue
        try:
            req = json.loads(line)
            cmd = req.get("cmd")
            if cmd == "quit":
                break
            if cmd == "load":
                reply = worker.load(req)
            elif cmd == "run":
                reply = worker.run(req)
            else:
                raise ValueError(f"unknown request {cmd!r}")
            reply["ok"] = True
        except Exception as exc:
            import traceback

            reply = {
                "ok": False,
                "error": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc(),
            }
        out.write(json.dumps(reply) + "\n")
        out.flush()


def main(argv: list[str]) -> int:
    here = str(Path(__file__).resolve().parent)
    # The script's own directory (difftree_rt/cli) must not shadow top-level modules.
    sys.path[:] = [p for p in sys.path if not p or str(Path(p).resolve()) != here]
    # Replies go to a private copy of stdout; anything a library prints goes to stderr.
    reply_out = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    if len(argv) > 1:
        import_checkout(Path(argv[1]))
    serve(sys.stdin, reply_out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
