"""The end-to-end commands on a tiny pair built in the test: train-drafter, generate, bench,
demo (and its fallback without a pair)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

from difftree_rt.cli import main
from difftree_rt.models import DFlashDrafter
from difftree_rt.train.corpus import load_tokenizer, train_tokenizer

SRC = '''def add(a, b):
    """Return a + b."""
    return a + b


class Point:
    def __init__(self, x, y):
        self.x = x
        self.y = y

    def norm(self):
        return (self.x ** 2 + self.y ** 2) ** 0.5
'''


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pair")
    data = root / "data"
    data.mkdir()
    for i in range(4):
        (data / f"m{i}.py").write_text(SRC.replace("add", f"add{i}") * 3)
    train_tokenizer(sorted(data.glob("*.py")), 300, root / "tok")
    tok = load_tokenizer(root / "tok")
    torch.manual_seed(0)
    cfg = Qwen3Config(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=4,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, initializer_range=0.2,
        max_position_embeddings=512, tie_word_embeddings=True, bos_token_id=None,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    target = Qwen3ForCausalLM(cfg).eval()
    target.save_pretrained(root / "target")
    tok.save_pretrained(root / "target")
    rc = main(
        ["train-drafter", "--target", str(root / "target"), "--out", str(root / "drafter"),
         "--data", str(data), "--steps", "3", "--context", "48", "--batch-size", "2",
         "--anchors", "4", "--block-size", "8", "--num-layers", "1", "--device", "cpu"]
    )  # fmt: skip
    assert rc == 0
    (root / "prompts.json").write_text(json.dumps(["def add(a, b):\n", "class Point:\n"]))
    return root


def test_train_drafter_output_loads(tiny_pair: Path) -> None:
    from transformers import AutoModelForCausalLM

    drafter = DFlashDrafter.from_pretrained(tiny_pair / "drafter")
    target = AutoModelForCausalLM.from_pretrained(tiny_pair / "target")
    drafter.bind(target)
    assert drafter.block_size == 8
    assert drafter.mask_token_id == load_tokenizer(tiny_pair / "target").mask_token_id


def test_generate_json(tiny_pair: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(
        ["generate", "--target", str(tiny_pair / "target"), "--drafter", str(tiny_pair / "drafter"),
         "--prompt", "def add(a, b):\n", "--max-new-tokens", "12", "--budget", "8", "--json",
         "--device", "cpu"]
    )  # fmt: skip
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["policy"] == "ddtree" and 1 <= out["new_tokens"] <= 12
    # What the library decodes for the same request (HF greedy's tokens, stopping at EOS).
    want = _library_run(tiny_pair, "ddtree", 8, ["def add(a, b):\n"], 12)
    assert out["tokens"] == want["tokens"][0] and out["tau"] == pytest.approx(want["tau"])
    assert out["completion"] == want["completions"][0]


def _library_run(
    pair: Path, policy: str, budget: int, prompts: list[str], new: int
) -> dict[str, Any]:
    """The library's greedy run of ``prompts`` (fp32, stopping at the tokenizer's EOS):
    tokens and completions per prompt, new tokens and τ pooled over the prompts. Each
    prompt's tokens are checked against HF greedy."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from difftree_rt import SpeculativeDecoder

    target = AutoModelForCausalLM.from_pretrained(pair / "target", dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(pair / "target")
    drafter = None
    if policy != "ar":
        drafter = DFlashDrafter.from_pretrained(pair / "drafter").to(torch.float32).bind(target)
    dec = SpeculativeDecoder(target, drafter, policy, budget=max(budget, 1))
    tokens, accepted, rounds = [], 0, 0
    for text in prompts:
        ids = tok(text, add_special_tokens=False, return_tensors="pt").input_ids
        out = dec.generate(ids, new, stop_token_ids=[tok.eos_token_id])
        ref = target.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, do_sample=False,
            eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        )  # fmt: skip
        assert torch.equal(out.sequences, ref)
        tokens.append(out.sequences[0, ids.shape[1] :].tolist())
        accepted += sum(out.stats.accepted_lengths)
        rounds += out.stats.rounds
    return {
        "tokens": tokens,
        "completions": [tok.decode(t) for t in tokens],
        "new_tokens": sum(map(len, tokens)),
        "tau": 1 + accepted / rounds if rounds else 0.0,
    }


def _assert_plot(path: Path) -> None:
    """A decodable PNG of a figure of at least 300 x 200 pixels with data drawn in colour (a
    blank figure or bare axes hold only black, grey and white pixels)."""
    import matplotlib.image

    img = matplotlib.image.imread(path)
    assert img.ndim == 3 and img.shape[0] >= 200 and img.shape[1] >= 300, img.shape
    rgb = img[..., :3]
    coloured = float(((rgb.max(-1) - rgb.min(-1)) > 0.25).mean())
    assert coloured > 0.002, (path.name, coloured)


def test_bench_json_and_plots(tiny_pair: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench"
    rc = main(
        ["bench", "--target", str(tiny_pair / "target"), "--drafter", str(tiny_pair / "drafter"),
         "--prompts", str(tiny_pair / "prompts.json"), "--max-new-tokens", "10",
         "--policies", "ar", "chain", "ddtree", "--budgets", "4", "8", "--out", str(out),
         "--quiet", "--device", "cpu", "--cuda-graphs", "off"]
    )  # fmt: skip
    assert rc == 0
    payload = json.loads((out / "bench.json").read_text())
    assert payload["cuda_graphs"] == "off"
    res = payload["results"]
    assert [(r["policy"], r["budget"]) for r in res] == [
        ("ar", 0),
        ("chain", 7),
        ("ddtree", 4),
        ("ddtree", 8),
    ]
    assert all(r["tokens"] == res[0]["tokens"] for r in res)  # greedy: same text everywhere
    assert all(r["identical_to_ar"] for r in res)
    prompts = json.loads((tiny_pair / "prompts.json").read_text())
    ar_runs = res[0]["tokens_per_s_runs"]
    for r in res:
        # τ and token counts: the library's for the same prompts, pooled over them.
        want = _library_run(tiny_pair, r["policy"], r["budget"], prompts, 10)
        assert r["tau"] == pytest.approx(want["tau"]) and r["tokens"] == want["new_tokens"]
        # The speedup summary is what its recorded repeats give (repeat i over AR's repeat i).
        ratios = [t / a for t, a in zip(r["tokens_per_s_runs"], ar_runs, strict=True)]
        p10, med, p90 = np.percentile(ratios, [10, 50, 90])
        assert (r["speedup_p10"], r["speedup_vs_ar"], r["speedup_p90"]) == pytest.approx(
            (p10, med, p90)
        )
    for name in ("tau_speedup_vs_budget.png", "acceptance_histogram.png"):
        _assert_plot(out / name)


def test_demo_runs_pair(tiny_pair: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["demo", "--pair", str(tiny_pair), "--max-new-tokens", "10", "--num-prompts", "2",
               "--device", "cpu", "--no-color"])  # fmt: skip
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "speedup" in text and "output identical to AR: yes" in text


def test_demo_falls_back_without_pair(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import difftree_rt.cli.demo as demo
    import difftree_rt.cli.demo_select as sel

    called = {}
    monkeypatch.setattr(sel, "run_demo", lambda **kw: called.update(kw) or 0)
    monkeypatch.setattr(demo, "find_pair_dir", lambda: None)
    assert main(["demo"]) == 0
    assert "No trained reference pair" in capsys.readouterr().out and called
