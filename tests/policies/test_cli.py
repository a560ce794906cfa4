"""``difftree-rt profile-cost`` on a tiny preset (CPU): a loadable, fitted cost table."""

from __future__ import annotations

import json

import pytest
import torch

from difftree_rt import SpeculativeDecoder
from difftree_rt.cli import main
from difftree_rt.policies import CaDDTreePolicy, CostTable


def test_profile_cost_writes_a_table(tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "cost.json"
    argv = ["profile-cost", "--target", "tiny", "--device", "cpu", "--nodes", "0", "3", "16",
            "--contexts", "8", "40", "--repeats", "2", "--warmup", "1", "--block-size", "4",
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    d = json.loads(out.read_text())
    assert d["meta"]["device"] == "cpu" and d["meta"]["dtype"] == "float32"
    assert d["nodes"] == [0, 3, 16] and d["contexts"] == [8, 40]
    table = CostTable.load(out)
    row = table.verify_costs(64, 20)
    assert (row[1:] >= row[:-1] - 1e-12).all()
    assert CaDDTreePolicy(32, str(out)).table.unit == "ms"


def test_record_trace_then_eval_policies(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from engine_helpers import random_pair

    target, drafter = random_pair("qwen3")
    target.save_pretrained(tmp_path / "target")
    drafter.save_pretrained(tmp_path / "drafter")
    trace = tmp_path / "trace.safetensors"
    argv = ["record-trace", "--target", str(tmp_path / "target"), "--drafter",
            str(tmp_path / "drafter"), "--prompt-ids", "5 17 99 3", "--max-new-tokens", "12",
            "--budget", "32", "--device", "cpu", "--out", str(trace)]  # fmt: skip
    assert main(argv) == 0
    out = tmp_path / "table.json"
    assert main(["eval-policies", str(trace), "--budgets", "4", "32", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    dd32 = next(r for r in rows if r["policy"] == "ddtree" and r["budget"] == 32)
    # Replaying the recorded policy itself gives the recorded run's τ exactly.
    run = SpeculativeDecoder(target, drafter, "ddtree", budget=32).generate(
        torch.tensor([[5, 17, 99, 3]]), 12
    )
    assert dd32["round_coverage"] == 1.0
    assert dd32["tau_greedy"] == pytest.approx(run.stats.tau)
