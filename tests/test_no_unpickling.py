"""Nothing in a file runs code: every loader of a trace, checkpoint, scorer or work file, and
the CLI commands that read them, refuse a pickle payload with a ValueError naming the path
(the payload never runs), and the package source contains no unpickling call."""

from __future__ import annotations

import ast
import os
import pickle
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
PAIR_TARGET = ROOT / "assets" / "reference_pair" / "target"


class _Payload:
    """Unpickling this object calls ``open(marker, "w")``: it creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.marker, "w"))


def _plant(path: Path, marker: Path, kind: str) -> Path:
    """Write a payload file at ``path``: ``torch`` (torch.save's zip) or ``pickle`` (raw)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = {"format": "difftree_rt.trace/1", "step": 1, "x": _Payload(marker)}
    if kind == "torch":
        torch.save(blob, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(blob, f)
    return path


def _refused(load: Callable[[], object], path: Path, marker: Path) -> None:
    with pytest.raises(ValueError) as info:
        load()
    assert not marker.exists(), "the pickle payload ran"
    msg = str(info.value)
    assert str(path) in msg and "pickle" in msg and "no longer" in msg, msg


KINDS = ("torch", "pickle")


@pytest.mark.parametrize("kind", KINDS)
def test_trace_load_refuses_pickle(tmp_path: Path, kind: str) -> None:
    from difftree_rt.eval import Trace

    marker = tmp_path / "ran"
    path = _plant(tmp_path / "evil.pt", marker, kind)
    _refused(lambda: Trace.load(path), path, marker)


@pytest.mark.parametrize("kind", KINDS)
def test_checkpoint_load_refuses_pickle(tmp_path: Path, kind: str) -> None:
    from difftree_rt.train.checkpoint import load_checkpoint, read_checkpoint

    marker = tmp_path / "ran"
    path = _plant(tmp_path / "evil.ckpt", marker, kind)
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(model.parameters())
    _refused(lambda: load_checkpoint(path, model=model, optimizer=opt), path, marker)
    _refused(lambda: read_checkpoint(path), path, marker)


def test_train_lm_resume_refuses_pickle(tmp_path: Path) -> None:
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from difftree_rt.train.corpus import TokenStream
    from difftree_rt.train.lm import LMTrainConfig, train_lm

    cfg = Qwen3Config(vocab_size=16, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=8)  # fmt: skip
    marker = tmp_path / "ran"
    path = _plant(tmp_path / "target.ckpt", marker, "torch")
    stream = TokenStream(torch.arange(400) % 16)
    lm_cfg = LMTrainConfig(steps=1, batch_size=2, context=8, warmup=1)
    _refused(
        lambda: train_lm(Qwen3ForCausalLM(cfg), stream, lm_cfg, path, progress=False), path, marker
    )


@pytest.mark.parametrize("kind", KINDS)
def test_scorer_load_refuses_pickle(tmp_path: Path, kind: str) -> None:
    from difftree_rt.policies.taps_scorer import EdgeScorer

    marker = tmp_path / "ran"
    path = _plant(tmp_path / "scorer.pt", marker, kind)
    _refused(lambda: EdgeScorer.load(path), path, marker)


def test_reference_pair_work_files_refuse_pickle(tmp_path: Path) -> None:
    from difftree_rt.train import reference_pair as rp

    work = tmp_path / "work"
    marker = tmp_path / "ran"
    gen = _plant(work / rp.GENERATED_NAME, marker, "torch")
    _refused(lambda: rp.load_generated(gen), gen, marker)
    for name in ("target", "drafter", "vp_drafter"):
        ckpt = _plant(work / f"{name}.ckpt", marker, "torch")
        _refused(lambda path=ckpt: rp.checkpoint_log(path), ckpt, marker)


@pytest.mark.parametrize("payload", [False, True])
def test_hf_target_with_only_a_bin_file_is_refused(tmp_path: Path, payload: bool) -> None:
    """A target directory holding ``pytorch_model.bin`` (a pickle) instead of safetensors."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from difftree_rt import SpeculativeDecoder

    cfg = Qwen3Config(vocab_size=16, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=8)  # fmt: skip
    target = tmp_path / "target"
    cfg.save_pretrained(target)
    marker = tmp_path / "ran"
    state = dict(Qwen3ForCausalLM(cfg).state_dict())
    if payload:
        state["x"] = _Payload(marker)  # type: ignore[assignment]
    torch.save(state, target / "pytorch_model.bin")
    with pytest.raises(OSError, match=r"model\.safetensors"):
        SpeculativeDecoder.from_pretrained(target, None, policy="ar", device="cpu")
    assert not marker.exists()


def _cli(*argv: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run(
        [sys.executable, "-m", "difftree_rt", *argv],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=ROOT,
    )


def _cli_refused(res: subprocess.CompletedProcess[str], path: Path, marker: Path) -> None:
    assert not marker.exists(), "the pickle payload ran"
    out = res.stdout + res.stderr
    assert res.returncode != 0, out
    assert str(path) in out and "pickle" in out and "no longer" in out, out


def test_cli_eval_policies_and_train_scorer_refuse_pickle(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    path = _plant(tmp_path / "evil.pt", marker, "torch")
    _cli_refused(_cli("eval-policies", str(path)), path, marker)
    _cli_refused(_cli("train-scorer", str(path), "--out", str(tmp_path / "s")), path, marker)


@pytest.mark.parametrize("explicit", [True, False])
def test_cli_train_drafter_refuses_pickle_checkpoint(tmp_path: Path, explicit: bool) -> None:
    """``--ckpt evil.pt``, and a file planted at the default ``<out>.ckpt``."""
    data = tmp_path / "data.py"
    data.write_text("def f(x):\n    return x + 1\n" * 20)
    out = tmp_path / "drafter"
    marker = tmp_path / "ran"
    path = _plant(tmp_path / "evil.pt" if explicit else Path(f"{out}.ckpt"), marker, "torch")
    argv = ["train-drafter", "--target", str(PAIR_TARGET), "--out", str(out), "--data",
            str(data), "--steps", "1", "--context", "32", "--batch-size", "1", "--anchors", "2",
            "--block-size", "4", "--device", "cpu"]  # fmt: skip
    res = _cli(*argv, *(["--ckpt", str(path)] if explicit else []))
    _cli_refused(res, path, marker)
    assert not out.exists()


# Calls that unpickle (or evaluate text as code). ``.eval()`` (nn.Module) is not ``eval(``.
_FORBIDDEN = re.compile(
    r"weights_only\s*=\s*False|torch\.load\s*\(|pickle\.loads?\s*\(|allow_pickle\s*=\s*True"
    r"|(?<![\w.])(?:eval|exec)\s*\(|yaml\.(?:unsafe_)?load\s*\(|marshal\.loads?\s*\("
    r"|import (?:dill|shelve|joblib)"
)


def test_source_never_unpickles() -> None:
    hits = []
    for folder in ("python", "scripts", "bench"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if _FORBIDDEN.search(line):
                    hits.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()}")
    assert not hits, "\n".join(hits)


# ``from_pretrained`` of these reads no weights, or only safetensors (the DFlash drafter).
_NO_WEIGHTS = {"AutoTokenizer", "AutoConfig", "DFlashDrafter", "cls", "super()"}


def test_hf_models_load_only_safetensors() -> None:
    """Every HF model ``from_pretrained`` passes ``use_safetensors=True`` (without it, a
    directory holding only ``pytorch_model.bin`` is unpickled)."""
    hits = []
    for folder in ("python", "scripts", "bench"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                    continue
                if node.func.attr != "from_pretrained":
                    continue
                if ast.unparse(node.func.value) in _NO_WEIGHTS:
                    continue
                ok = any(
                    k.arg == "use_safetensors"
                    and isinstance(k.value, ast.Constant)
                    and k.value.value is True
                    for k in node.keywords
                )
                if not ok:
                    hits.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not hits, "from_pretrained without use_safetensors=True: " + ", ".join(hits)
