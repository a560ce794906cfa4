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
    assert "VP drafter" not in (out / "README.md").read_text()
    # --vp: fine-tune the exported drafter with visible prefixes, export, measure, card.
    assert main([*common, "--vp"]) == 0
    vp = DFlashDrafter.from_pretrained(out / "vp_drafter")
    assert vp.check_target(target) == [] and vp.dtype == torch.bfloat16
    assert vp.block_size == drafter.block_size
    changed = [k for k, v in vp.state_dict().items() if not torch.equal(v, drafter.state_dict()[k])]
    assert changed  # trained, not a copy
    summary = json.loads((out / "training_summary.json").read_text())
    vsum = summary["vp_drafter"]
    assert vsum["config"]["prefix_geom"] == 0.1 and vsum["steps"] == 3 and vsum["log"]
    res = vsum["prefix_accuracy"]["results"]
    assert set(res) == {"drafter", "drafter_prefix_masked", "vp_drafter"}
    assert res["drafter"]["0"] == res["drafter_prefix_masked"]["0"]  # nothing to mask at p = 0
    assert set(res["drafter"]) == {"0", "2", "4"}  # block size 8: p <= 6
    assert all(0.0 <= r["acc1"] <= 1.0 for r in res["vp_drafter"].values())
    assert summary["target"]["heldout_ppl_fp32"] > 1.0  # the rest of the summary is kept
    assert main(["--card", "--out", str(out)]) == 0
    assert "VP drafter" in (out / "README.md").read_text()
