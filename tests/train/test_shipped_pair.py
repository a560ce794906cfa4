"""The shipped reference pair (assets/reference_pair) loads with the HF auto classes and
DFlashDrafter, fits the size limits, and decodes losslessly with a useful τ."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

PAIR = Path(__file__).resolve().parents[2] / "assets" / "reference_pair"
pytestmark = pytest.mark.skipif(
    not (PAIR / "target" / "config.json").exists(), reason="no shipped pair"
)


def test_sizes() -> None:
    files = [f for f in PAIR.rglob("*") if f.is_file()]
    assert all(f.stat().st_size <= 16 * 2**20 for f in files)
    assert sum(f.stat().st_size for f in files) <= 40 * 10**6


def test_loads_binds_and_decodes_losslessly() -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from difftree_rt import SpeculativeDecoder
    from difftree_rt.models import DFlashDrafter

    target = AutoModelForCausalLM.from_pretrained(PAIR / "target", dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(PAIR / "target")
    drafter = DFlashDrafter.from_pretrained(PAIR / "drafter").to(torch.float32)
    assert drafter.check_target(target) == []
    assert drafter.mask_token_id == tok.mask_token_id
    prompt = json.loads((PAIR / "prompts.json").read_text())[0]
    ids = tok(prompt, return_tensors="pt").input_ids
    ar = SpeculativeDecoder(target, None, "ar").generate(ids, 48)
    spec = SpeculativeDecoder(target, drafter, "ddtree", budget=64).generate(ids, 48)
    assert torch.equal(ar.sequences, spec.sequences)
    assert spec.stats.tau > 1.5
