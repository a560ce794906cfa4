"""bench/bench_hybrid.py on a tiny hybrid shape: every table row is measured and written (JSON
stamped with the shape, a PNG), the commit paths are real paths of the benchmark's trees, and
bad arguments give a clear argparse error."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: bench/

from bench import bench_hybrid as bh

TINY = ["--hidden", "64", "--layers", "4", "--heads-k", "2", "--heads-v", "4", "--head-dim", "16",
        "--attn-heads", "4", "--kv-heads", "2", "--attn-head-dim", "16", "--vocab", "128",
        "--prefill", "16", "--nodes", "16", "--paths", "1", "4", "--threads", "1",
        "--repeats", "2", "--op-repeats", "2", "--warmup", "0"]  # fmt: skip


def _check_times(t: dict[str, float]) -> None:
    assert t["n"] == 2 and math.isfinite(t["median"]) and t["median"] > 0
    assert t["p10"] <= t["median"] <= t["p90"]


def test_smoke_run_writes_every_row(tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    payload = bh.main([*TINY, "--out-dir", str(tmp_path)])
    assert torch.get_num_threads() == threads  # restored after the run
    written = json.loads(next(tmp_path.glob("bench_hybrid-*.json")).read_text())
    assert written["config"]["layer_types"] == ["linear_attention"] * 3 + ["full_attention"]
    assert written["config"]["hidden_size"] == 64 and written["stamp"]["git_sha"]
    assert next(tmp_path.glob("bench_hybrid-*.png")).stat().st_size > 0
    (block,) = payload["results"]
    assert block["threads"] == 1
    for kind in ("hybrid", "attention"):
        (row,) = block[kind]["verify"]
        assert row["nodes"] == 16 and row["tree_shape"]["max_depth"] >= 7
        for t in (row["tree"], row["chain"], block[kind]["decode"]):
            _check_times(t)
        assert [(r["nodes"], r["path"]) for r in block[kind]["commit"]] == [(16, 1), (16, 4)]
    assert block["ops"]["shape"] == {"H_k": 2, "H_v": 4, "D_k": 16, "D_v": 16, "C": 128, "K": 4}
    assert [(r["op"], r["nodes"]) for r in block["ops"]["rows"]] == [
        ("gdn_verify", 16), ("gdn_conv", 16)
    ]  # fmt: skip
    for r in block["ops"]["rows"]:
        _check_times(r["tree"])
        _check_times(r["chain"])


@pytest.mark.parametrize("n", [16, 64])
def test_commit_paths_follow_parents(n: int) -> None:
    tree = bh.make_tree(n)
    path = bh.deepest_path(tree, 8)[0].tolist()
    assert path[0] == 0 and len(path) == 8
    for depth, (parent, child) in enumerate(zip(path, path[1:]), start=1):
        assert int(tree.parent[0, child]) == parent and int(tree.depth[0, child]) == depth
    with pytest.raises(ValueError, match="--paths 40"):
        bh.deepest_path(tree, 40)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--heads-k", "3", "--heads-v", "8"], "must be a multiple of --heads-k"),
        (["--layers", "2"], "--full-every"),
        (["--nodes", "1"], "--nodes must be in"),
        (["--hidden", "0"], "--hidden must be >= 1"),
    ],
)
def test_bad_arguments(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        bh.parse_args(argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err
