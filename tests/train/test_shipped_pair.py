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
    assert spec.stats.tau >= 0.9 * 3.13  # 0.9 x the τ measured (fp32 compute, CPU)


@pytest.mark.skipif(not (PAIR / "vp_drafter" / "config.json").exists(), reason="no VP drafter")
def test_vp_drafter_uses_the_visible_prefix() -> None:
    """The shipped VP drafter binds to the target, decodes losslessly as a plain drafter, and
    predicts the first masked slot after a visible prefix far better than the plain drafter
    (the card's table, here on the held-out prompts themselves)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from difftree_rt import SpeculativeDecoder
    from difftree_rt.models import DFlashDrafter
    from difftree_rt.train.prefix_eval import prefix_accuracy

    target = AutoModelForCausalLM.from_pretrained(PAIR / "target", dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(PAIR / "target")
    plain = DFlashDrafter.from_pretrained(PAIR / "drafter").to(torch.float32)
    vp = DFlashDrafter.from_pretrained(PAIR / "vp_drafter").to(torch.float32)
    assert vp.check_target(target) == [] and vp.block_size == plain.block_size
    prompts = json.loads((PAIR / "prompts.json").read_text())
    ids = [tok(p, add_special_tokens=False).input_ids for p in prompts]
    first = torch.tensor([ids[0]])
    ar = SpeculativeDecoder(target, None, "ar").generate(first, 32)
    spec = SpeculativeDecoder(target, vp, "ddtree", budget=32).generate(first, 32)
    assert torch.equal(ar.sequences, spec.sequences)
    length = min(len(x) for x in ids)
    seqs = torch.tensor([x[:length] for x in ids])
    acc = {}
    for name, drafter in (("plain", plain), ("vp", vp)):
        drafter.bind(target)
        acc[name] = prefix_accuracy(drafter, target, seqs, (0, 2, 4, 8), anchors=16, seed=0)
    assert abs(acc["vp"][0]["acc1"] - acc["plain"][0]["acc1"]) < 0.05  # p = 0 kept
    later = [2, 4, 8]
    vp_mean = sum(acc["vp"][p]["acc1"] for p in later) / 3
    plain_mean = sum(acc["plain"][p]["acc1"] for p in later) / 3
    assert vp_mean > 1.5 * plain_mean, acc
