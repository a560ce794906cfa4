"""``difftree-rt profile-cost`` on a tiny preset (CPU): a loadable, fitted cost table."""

from __future__ import annotations

import json

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
