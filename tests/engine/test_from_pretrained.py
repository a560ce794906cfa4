"""``SpeculativeDecoder.from_pretrained``: local directories written by ``save_pretrained`` (or
loaded models) give the same decoder, outputs and tokenizer as building it by hand."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from engine_helpers import greedy_reference, make_drafter, make_target

from difftree_rt import SpeculativeDecoder
from difftree_rt.models import DFlashDrafter
from difftree_rt.policies import D2SDPolicy

PAIR = Path(__file__).resolve().parents[2] / "assets" / "reference_pair"


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A random Qwen3 target, a drafter and a VP drafter (block 6) saved to disk."""
    root = tmp_path_factory.mktemp("pretrained")
    target = make_target("qwen3")
    target.save_pretrained(root / "target")
    make_drafter(target).save_pretrained(root / "drafter")
    make_drafter(target, block_size=6, seed=3).save_pretrained(root / "vp")
    return root / "target", root / "drafter", root / "vp"


def test_from_directories_equals_by_hand(saved: tuple[Path, Path, Path]) -> None:
    t_dir, d_dir, _ = saved
    dec = SpeculativeDecoder.from_pretrained(t_dir, d_dir, "ddtree", 16, device="cpu")
    assert dec.tokenizer is None  # the directory has no tokenizer files
    assert next(dec.model.parameters()).dtype == torch.float32  # the CPU default
    by_hand = SpeculativeDecoder(
        make_target("qwen3"), DFlashDrafter.from_pretrained(d_dir), "ddtree", 16
    )
    prompt = torch.tensor([[3, 1, 4, 1, 5, 9]])
    got = dec.generate(prompt, 20)
    assert torch.equal(got.sequences, by_hand.generate(prompt, 20).sequences)
    assert torch.equal(got.sequences, greedy_reference(dec.model, prompt, 20))
    ar = SpeculativeDecoder.from_pretrained(str(t_dir), policy="ar", device="cpu")
    assert torch.equal(ar.generate(prompt, 20).sequences, got.sequences)


def test_loaded_target_keeps_its_dtype_and_drafters_follow(saved: tuple[Path, Path, Path]) -> None:
    _, d_dir, v_dir = saved
    target = make_target("qwen3")  # float32: the dtype argument applies to loaded files only
    dec = SpeculativeDecoder.from_pretrained(
        target, d_dir, "d2sd", 12, vp_drafter=v_dir, dtype="bfloat16"
    )
    assert dec.model is target and dec.drafter is not None
    assert dec.drafter.dtype == torch.float32
    assert isinstance(dec.policy, D2SDPolicy) and dec.policy.vp_drafter is not None
    assert dec.policy.vp_drafter.block_size == 6 and dec.policy.vp_drafter.dtype == torch.float32
    prompt = torch.tensor([[2, 7, 1, 8]])
    assert torch.equal(dec.generate(prompt, 12).sequences, greedy_reference(target, prompt, 12))


def test_shipped_pair_with_tokenizer() -> None:
    dec = SpeculativeDecoder.from_pretrained(
        PAIR / "target", PAIR / "drafter", "ddtree", 16, device="cpu", dtype="float32"
    )
    assert dec.tokenizer is not None
    ids = dec.tokenizer("def add(a, b):\n", return_tensors="pt").input_ids
    out = dec.generate(ids, 16)
    assert torch.equal(out.sequences, greedy_reference(dec.model, ids, 16))
    assert out.stats.tau >= 0.9 * 1.667  # 0.9 x the τ measured (fp32, CPU)
    assert isinstance(dec.tokenizer.decode(out.sequences[0]), str)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(target="/nonexistent/model"), "target: expected a local model directory"),
        (dict(drafter="/nonexistent/drafter"), "drafter: expected a local drafter directory"),
        (dict(vp_drafter="VP"), "vp_drafter is D²SD's second drafter"),
        (dict(dtype="float33"), "dtype must be a torch dtype"),
    ],
)
def test_errors(saved: tuple[Path, Path, Path], kwargs: dict, match: str) -> None:
    t_dir, d_dir, v_dir = saved
    args = dict(target=t_dir, drafter=d_dir, device="cpu")
    args.update(kwargs)
    if args.get("vp_drafter") == "VP":
        args["vp_drafter"] = v_dir
    with pytest.raises(ValueError, match=match):
        SpeculativeDecoder.from_pretrained(**args)  # type: ignore[arg-type]


def test_drafter_for_another_target_is_refused(saved: tuple[Path, Path, Path]) -> None:
    t_dir, _, _ = saved
    with pytest.raises(ValueError, match="does not fit"):
        SpeculativeDecoder.from_pretrained(t_dir, PAIR / "drafter", device="cpu")
