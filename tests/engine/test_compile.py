"""Compiled model forwards (issue 19, ``SpeculativeDecoder(compile=True)``).

Graph mode's target verify / step and drafter forwards run through ``torch.compile`` with
static shapes per (B, tree-size bucket, key span). Compiled == uncompiled graph mode in tokens
and accepted lengths (greedy and sampled, a left-padded batch of 2, two architectures), greedy
== HF, no graph break and no recompile over multi-round generations whose trees vary inside a
bucket, one warning and the same tokens when compiling fails.

Compile time on 2 CPU cores dominates these tests, so most of them compile with the
``aot_eager`` backend (dynamo's tracing and AOT functionalisation exactly as inductor gets
them, without code generation) on decoders shared across tests; one test compiles with
inductor itself (scalar C++ kernels, one compile thread: a cold inductor compile of vectorised
kernels costs ~20 s per graph here).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from engine_helpers import greedy_reference, make_drafter, make_target, trained_pair
from torch._dynamo.utils import counters

from difftree_rt import SpeculativeDecoder
from difftree_rt.models import compiled as compiled_mod

NEW = 20
BUDGET = 8


@functools.cache
def _pair(arch: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    if arch == "qwen3":
        return trained_pair()  # V = 32, realistic acceptance (shared with other modules)
    target = make_target(arch, vocab=64, seed=3)
    return target, make_drafter(target, seed=3)


@functools.cache
def _decoder(arch: str, policy: str, compiled: bool, backend: str = "aot_eager") -> Any:
    """A graph-mode decoder (uncaptured on the CPU), compiled or not; shared across tests so
    its compiled functions are reused."""
    target, drafter = _pair(arch)
    if not compiled:
        return SpeculativeDecoder(target, drafter, policy, BUDGET, cuda_graphs=True)
    dec = SpeculativeDecoder(target, drafter, policy, BUDGET, compile=True)
    assert dec.cuda_graphs  # compile=True turns graph mode on for a CPU target
    dec._compile_state.backend = backend
    return dec


def _prompts(arch: str) -> list[torch.Tensor]:
    vocab = _pair(arch)[0].config.vocab_size
    gen = torch.Generator().manual_seed(11)
    return [torch.randint(0, vocab, (n,), generator=gen) for n in (7, 12)]


def _assert_same(got: Any, want: Any) -> None:
    assert torch.equal(got.sequences, want.sequences)
    for a, b in zip(got.request_stats, want.request_stats, strict=True):
        assert a.accepted_lengths == b.accepted_lengths


@pytest.fixture
def no_warnings() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        yield


@pytest.mark.parametrize("arch", ["qwen3", "llama"])
@pytest.mark.parametrize("policy", ["ddtree", "chain", "presto"])
def test_compiled_equals_uncompiled(arch: str, policy: str, no_warnings: None) -> None:
    comp, plain = _decoder(arch, policy, True), _decoder(arch, policy, False)
    prompts = _prompts(arch)
    for kw in ({}, {"temperature": 0.8, "seed": 5}):
        got = comp.generate(prompts, NEW, **kw)
        _assert_same(got, plain.generate(prompts, NEW, **kw))
        if not kw:  # greedy == HF, request by request
            for b, p in enumerate(prompts):
                ref = greedy_reference(comp.model, p[None], NEW)[0, p.numel() :]
                assert torch.equal(got.sequences[b, -NEW:], ref)
    state = comp._compile_state
    assert state.enabled and state.error is None
    keys = [k for r in comp._pool.rounds.values() for k in r.compiler.keys]
    kinds = {k[0] for k in keys}
    assert {"target", "draft", "append"} <= kinds, keys


def test_no_graph_break_no_recompile_with_varying_trees() -> None:
    """A multi-round generation whose trees change size inside a bucket (caddtree: the cut
    moves with the context): every shape key compiles exactly once (a recompile is an error),
    no graph break anywhere."""
    from difftree_rt.policies import CaDDTreePolicy, CostTable

    steep = CostTable(
        nodes=[0, 8, 64],
        contexts=[4, 24, 60],
        verify=[[[1.0, 1.02, 1.2], [1.0, 1.6, 9.0], [1.0, 4.0, 40.0]]],
        draft=[[0.2, 0.3, 0.5]],
    )
    target, drafter = _pair("qwen3")
    dec = SpeculativeDecoder(target, drafter, CaDDTreePolicy(16, steep), compile=True)
    dec._compile_state.backend = "aot_eager"
    runner = dec._runner()
    sizes: dict[int, set[int]] = {}

    def record(_r: int) -> None:
        nb = runner.bucket_log[-1][1]
        num_nodes = runner._round.state.trees[nb][7]  # type: ignore[union-attr]
        sizes.setdefault(nb, set()).update(num_nodes.tolist())

    runner.on_round = record
    breaks = sum(counters["graph_break"].values())
    graphs = counters["stats"]["unique_graphs"]
    with torch._dynamo.config.patch(error_on_recompile=True):
        gen = torch.Generator().manual_seed(2)
        for _ in range(2):
            prompt = torch.randint(0, 32, (2, 9), generator=gen)
            out = dec.generate(prompt, 40)
            assert out.stats.batch_rounds > 5
    keys = [k for r in dec._pool.rounds.values() for k in r.compiler.keys]
    assert counters["stats"]["unique_graphs"] - graphs == len(keys) == dec._compile_state.compiled
    assert sum(counters["graph_break"].values()) == breaks
    assert dec._compile_state.enabled
    assert max(len(s) for s in sizes.values()) > 1, sizes  # trees of several sizes in a bucket


def test_inductor_compiled_equals_uncompiled() -> None:
    """The real backend: inductor's C++ kernels (scalar: vectorised ones compile far longer)."""
    patch = {"cpp.vec_isa_ok": False, "compile_threads": 1}
    comp = _decoder("qwen3", "ddtree", True, "inductor")
    plain = _decoder("qwen3", "ddtree", False)
    prompts = _prompts("qwen3")
    with torch._inductor.config.patch(patch), warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        first = comp.generate(prompts, NEW)
        again = comp.generate(prompts, NEW, temperature=0.8, seed=5)
    _assert_same(first, plain.generate(prompts, NEW))
    _assert_same(again, plain.generate(prompts, NEW, temperature=0.8, seed=5))
    assert first.stats.compile_time > 0 and again.stats.compile_time == 0.0
    assert comp._compile_state.enabled


def test_failed_compile_falls_back_with_one_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        def fail(*a: Any) -> Any:
            raise RuntimeError("inductor exploded")

        return fail

    monkeypatch.setattr(compiled_mod.torch, "compile", broken)
    target, drafter = _pair("qwen3")
    dec = SpeculativeDecoder(target, drafter, "ddtree", BUDGET, compile=True)
    prompts = _prompts("qwen3")
    with pytest.warns(RuntimeWarning, match="inductor exploded") as record:
        got = dec.generate(prompts, NEW)
        again = dec.generate(prompts, NEW, temperature=0.8, seed=5)
    assert len([w for w in record if issubclass(w.category, RuntimeWarning)]) == 1
    plain = _decoder("qwen3", "ddtree", False)
    _assert_same(got, plain.generate(prompts, NEW))
    _assert_same(again, plain.generate(prompts, NEW, temperature=0.8, seed=5))
    assert not dec._compile_state.enabled and got.stats.compile_time == 0.0


def test_compile_argument_errors() -> None:
    target, drafter = _pair("qwen3")
    with pytest.raises(ValueError, match=r"compile=True needs graph mode.*cuda_graphs=False"):
        SpeculativeDecoder(target, drafter, "ddtree", BUDGET, cuda_graphs=False, compile=True)
    with pytest.raises(ValueError, match="compile must be None, True or False"):
        SpeculativeDecoder(target, drafter, "ddtree", BUDGET, compile="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="compile_mode must be one of"):
        SpeculativeDecoder(target, drafter, "ddtree", BUDGET, compile=True, compile_mode="max")
    # Off by default, and compile=False leaves graph mode as it was (off on the CPU).
    assert SpeculativeDecoder(target, drafter, "ddtree", BUDGET).compile is False
    dec = SpeculativeDecoder(target, drafter, "ddtree", BUDGET, compile=False)
    assert not dec.cuda_graphs and dec._compile_state is None
