"""Smoke test of the reference-pair pipeline (tiny preset, few files): every stage runs, the
export loads with the HF auto classes and DFlashDrafter, and the card is written."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from difftree_rt.train.reference_pair import main


def test_tiny_pipeline(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from difftree_rt.models import DFlashDrafter

    work, out = tmp_path / "work", tmp_path / "out"
    common = ["--preset", "tiny", "--work", str(work), "--out", str(out), "--max-files", "12"]
    assert main([*common, "--stop-after", "data"]) == 0
    state = json.loads((work / "tiny" / "state.json").read_text())
    assert state["tokenizer"] == state["data"] == "done" and "target" not in state
    assert main(common) == 0  # resumes at the target stage and finishes
    target = AutoModelForCausalLM.from_pretrained(out / "target")
    tok = AutoTokenizer.from_pretrained(out / "target")
    drafter = DFlashDrafter.from_pretrained(out / "drafter")
    drafter.bind(target)
    assert target.dtype == torch.bfloat16 and drafter.mask_token_id == tok.mask_token_id
    assert all(f.stat().st_size <= 16 * 2**20 for f in out.rglob("*") if f.is_file())
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["target"]["heldout_ppl_fp32"] > 1.0
    assert json.loads((out / "prompts.json").read_text())
    assert main(["--card", "--out", str(out)]) == 0
    assert "Held-out perplexity" in (out / "README.md").read_text()
