"""The safetensors + JSON files (difftree_rt.safe_files): traces and structures round-trip
exactly (types, dtypes, bits), and anything else is a ValueError naming the path."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

from difftree_rt.eval import Trace
from difftree_rt.eval.trace import TraceRound
from difftree_rt.safe_files import pack, read_tensor_file, unpack, write_tensor_file


def _round(g: torch.Generator, seq: int, n: int, branches: bool) -> TraceRound:
    L, K, k = 4, 6, 3
    m = 2 if branches else 0
    return TraceRound(
        seq=seq,
        ctx_len=5 + n,
        cand_token=torch.randint(0, 50, (L, K), generator=g, dtype=torch.int32),
        cand_logprob=torch.randn(L, K, generator=g),
        token=torch.randint(0, 50, (n,), generator=g, dtype=torch.int32),
        parent=torch.arange(-1, n - 1, dtype=torch.int32),
        depth=torch.arange(n, dtype=torch.int32),
        choice=torch.randint(0, 50, (n,), generator=g),
        edge_prob=torch.rand(n, generator=g),
        topk_token=torch.randint(0, 50, (n, k), generator=g, dtype=torch.int32),
        topk_prob=torch.rand(n, k, generator=g),
        accepted=n - 1,
        branch_token=torch.zeros(m, L, 2, dtype=torch.int32) if branches else None,
        branch_logprob=torch.full((m, L, 2), -math.inf) if branches else None,
    )


def test_trace_round_trip(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    meta = {"record_budget": 64, "vocab": 50, "d2sd": True, "prob_top_k": None, "pair": "x"}
    trace = Trace([_round(g, 0, 1, False), _round(g, 0, 5, True), _round(g, 1, 3, False)],
                  [[1, 2, 3], [4, 5]], meta)  # fmt: skip
    path = tmp_path / "t.safetensors"
    trace.save(path)
    back = Trace.load(path)
    assert back.meta == meta and back.sequences == trace.sequences
    assert len(back.rounds) == 3
    for a, b in zip(trace.rounds, back.rounds):
        for name, x in a.__dict__.items():
            y = b.__dict__[name]
            if isinstance(x, torch.Tensor):
                assert isinstance(y, torch.Tensor) and x.dtype == y.dtype, name
                assert x.shape == y.shape and torch.equal(x, y), name
            else:
                assert type(x) is type(y) and x == y, name


def test_pack_unpack_is_exact() -> None:
    shared = torch.arange(6.0)
    obj = {
        "t": (1, 2.5, None, True, "s", float("inf")),
        "ints": {3: {"exp_avg": shared, "step": torch.tensor(4.0)}, 0: []},
        "tied": [shared, shared.view(2, 3), shared[::2]],
        "bf16": torch.randn(3).to(torch.bfloat16),
        "empty": [torch.zeros(0, 2), torch.zeros(0, 2)],
        "nan": float("nan"),
    }
    structure, tensors = pack(obj)
    back = unpack(structure, tensors)
    assert back["t"] == obj["t"] and isinstance(back["t"], tuple)
    assert list(back["ints"]) == [3, 0] and back["ints"][0] == []
    assert torch.equal(back["tied"][2], shared[::2]) and back["tied"][1].shape == (2, 3)
    assert back["bf16"].dtype == torch.bfloat16 and torch.equal(back["bf16"], obj["bf16"])
    assert math.isnan(back["nan"])
    with pytest.raises(TypeError, match="'/x/0'"):
        pack({"x": [object()]})
    with pytest.raises(TypeError, match="all str or all int"):
        pack({1: 0, "a": 1})


def test_tensor_file_round_trip_with_shared_storage(tmp_path: Path) -> None:
    emb = torch.randn(4, 3)
    obj = {"embed.weight": emb, "lm_head.weight": emb, "empty": torch.zeros(0)}
    path = tmp_path / "m.safetensors"
    write_tensor_file(path, "fmt/1", obj)
    back = read_tensor_file(path, "fmt/1", "")
    assert torch.equal(back["embed.weight"], emb) and torch.equal(back["lm_head.weight"], emb)


def test_not_a_file_of_the_format(tmp_path: Path) -> None:
    trace = tmp_path / "t.safetensors"
    Trace().save(trace)
    with pytest.raises(ValueError, match=r"format 'difftree_rt.trace/2', expected 'other/1'"):
        read_tensor_file(trace, "other/1", "")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a tensor file at all")
    bad_header = tmp_path / "bad.safetensors"
    bad_header.write_bytes((200).to_bytes(8, "little") + b"{oops")
    for path in (junk, bad_header, tmp_path / "missing.safetensors", tmp_path):
        with pytest.raises(ValueError, match=re.escape(str(path))):
            Trace.load(path)
    with pytest.raises(ValueError, match="is a directory"):
        Trace().save(tmp_path)


def test_header_length_that_looks_like_a_pickle_opcode(tmp_path: Path) -> None:
    """A safetensors header of 0x280 bytes starts with b"\\x80\\x02" (pickle's PROTO 2): still
    read as safetensors."""
    path = tmp_path / "p.safetensors"
    for pad in range(700):
        write_tensor_file(path, "fmt/1", {"pad": "x" * pad, "t": torch.arange(3)})
        if path.read_bytes()[:2] == b"\x80\x02":
            break
    else:
        pytest.fail("no padding gave a 0x280-byte header")
    back = read_tensor_file(path, "fmt/1", "")
    assert torch.equal(back["t"], torch.arange(3))


def test_malformed_structure_is_a_value_error(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "m.safetensors"
    for header in ('{"a": {"__tensor__": [1]}}', '{"a": {"__tensor__": "nope"}}', "{oops"):
        save_file({}, str(path), metadata={"format": "fmt/1", "json": header})
        with pytest.raises(ValueError, match=re.escape(str(path))):
            read_tensor_file(path, "fmt/1", "")


@pytest.mark.parametrize(
    "field, value",
    [("hidden", 60_000), ("tok_dim", 10**6), ("max_depth", 10**8), ("hidden", 2.5), ("vocab", -1)],
)
def test_scorer_config_that_disagrees_with_its_tensors_is_refused_unbuilt(
    tmp_path: Path, field: str, value: object
) -> None:
    """A tampered scorer config is refused against the file's own tensors before any module is
    built: hidden = 60,000 alone would allocate and initialise ~14 GB."""
    import time

    from difftree_rt.policies.taps_scorer import _FORMAT, EdgeScorer

    path = tmp_path / "scorer.safetensors"
    EdgeScorer(vocab=32, hidden=16, tok_dim=4, max_depth=8, buckets=64).save(path)
    blob = read_tensor_file(path, _FORMAT, "")
    blob["config"][field] = value
    write_tensor_file(path, _FORMAT, blob)
    start = time.perf_counter()
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}: malformed TAPS scorer.*"):
        EdgeScorer.load(path)
    assert time.perf_counter() - start < 5.0
