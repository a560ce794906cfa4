"""``--policy auto`` through the CLI on the shipped reference pair: ``generate`` (the choices
in its JSON, the tokens of greedy AR) and ``bench`` with ``ar`` and ``auto`` side by side."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from difftree_rt.cli import main
from difftree_rt.cli.pair import find_pair_dir

pytestmark = pytest.mark.skipif(find_pair_dir() is None, reason="no shipped reference pair")


@pytest.fixture(autouse=True)
def _restore_threads() -> Iterator[None]:
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _generate(policy: str, capsys: pytest.CaptureFixture[str]) -> dict:
    rc = main(["generate", "--policy", policy, "--prompt", "def add(a, b):\n",
               "--max-new-tokens", "24", "--json", "--device", "cpu"])  # fmt: skip
    assert rc == 0
    return json.loads(capsys.readouterr().out)


def test_generate_auto_json(capsys: pytest.CaptureFixture[str]) -> None:
    auto = _generate("auto", capsys)
    ar = _generate("ar", capsys)
    assert auto["policy"] == "auto" and auto["budget"] == 64
    assert auto["tokens"] == ar["tokens"] and auto["completion"] == ar["completion"]  # greedy
    modes = {int(n): c for n, c in auto["modes"].items()}
    assert sum(modes.values()) == auto["rounds"] == len(auto["accepted_lengths"])
    assert set(modes) <= {1, 5, 9, 17, 33, 65} and all(c > 0 for c in modes.values())
    assert any(n > 1 for n in modes)  # the warm-up drafts
    assert ar["modes"] == {}


def test_bench_ar_and_auto(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench"
    rc = main(
        ["bench", "--policies", "ar", "auto", "--num-prompts", "1", "--max-new-tokens", "8",
         "--repeats", "1", "--no-plots", "--quiet", "--device", "cpu", "--out", str(out)]
    )  # fmt: skip
    assert rc == 0
    printed = capsys.readouterr().out
    rows = json.loads((out / "bench.json").read_text())["results"]
    assert rows[0]["policy"] == "ar" and len(rows) >= 2
    assert {r["policy"] for r in rows[1:]} == {"auto"}
    for r in rows:
        assert r["identical_to_ar"] and r["same_tokens_every_repeat"], r["budget"]
        assert r["tokens"] == rows[0]["tokens"] and r["tokens_per_s"] > 0
    assert "| auto |" in printed
    assert not list(out.glob("*.png"))  # --no-plots
