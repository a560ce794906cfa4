"""Bad input -> a clear error naming the argument (batch input errors: test_batch.py)."""

from __future__ import annotations

import pytest
import torch
from engine_helpers import make_drafter, make_target, random_pair

import difftree_rt
from difftree_rt import SpeculativeDecoder
from difftree_rt.engine import GenerationStats
from difftree_rt.models import TargetAdapter
from difftree_rt.policies import DDTreePolicy, register_policy


def test_lazy_export() -> None:
    assert difftree_rt.SpeculativeDecoder is SpeculativeDecoder


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(policy="beam"), "policy must be one of"),
        (dict(policy=3), "policy must be"),
        (dict(budget=0), "budget"),
        (dict(budget=4097), "budget"),
        (dict(budget=True), "budget"),
        (dict(max_length=10), "max_length"),
        (dict(max_length=1.5), "max_length"),
    ],
)
def test_constructor_errors(kwargs, match) -> None:
    target, drafter = random_pair("qwen3")
    with pytest.raises(ValueError, match=match):
        SpeculativeDecoder(target, drafter, **kwargs)


def test_drafter_must_fit_and_exist() -> None:
    target, drafter = random_pair("qwen3")
    other = make_target("llama", vocab=64)
    with pytest.raises(ValueError, match="vocab_size"):
        SpeculativeDecoder(other, drafter)
    drafter.bind(target)  # the failed construction must not leave it unbound
    with pytest.raises(ValueError, match="drafter is required"):
        SpeculativeDecoder(target, None, policy="ddtree")
    with pytest.raises(ValueError, match="drafter must be a DFlashDrafter"):
        SpeculativeDecoder(target, object(), policy="ddtree")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="target must be"):
        SpeculativeDecoder("model", drafter)  # type: ignore[arg-type]
    adapter = TargetAdapter(target, max_length=64, feature_layers=[0])
    with pytest.raises(ValueError, match="feature_layers"):
        SpeculativeDecoder(adapter, drafter)
    SpeculativeDecoder(target, None, policy="ar")  # the baseline needs no drafter


@pytest.mark.parametrize(
    "args,kwargs,exc,match",
    [
        ((torch.tensor([1, 2]), 4), {}, ValueError, "input_ids"),
        ((torch.tensor([[1.0, 2.0]]), 4), {}, ValueError, "input_ids"),
        ((torch.tensor([[1, 999]]), 4), {}, ValueError, "input_ids"),
        ((torch.zeros(1, 0, dtype=torch.long), 4), {}, ValueError, "input_ids"),
        (([[1, 2]], 4), {}, ValueError, "input_ids"),
        ((torch.tensor([[1, 2]]), 0), {}, ValueError, "max_new_tokens"),
        ((torch.tensor([[1, 2]]), 2.0), {}, ValueError, "max_new_tokens"),
        ((torch.tensor([[1, 2]]), 4), dict(temperature=-0.5), ValueError, "temperature"),
        ((torch.tensor([[1, 2]]), 4), dict(top_p=0.0), ValueError, "top_p"),
        ((torch.tensor([[1, 2]]), 4), dict(top_k=0), ValueError, "top_k"),
        ((torch.tensor([[1, 2]]), 4), dict(stop_token_ids=[500]), ValueError, "stop_token_ids"),
        ((torch.tensor([[1, 2]]), 4), dict(stop_token_ids="x"), ValueError, "stop_token_ids"),
    ],
)
def test_generate_errors(args, kwargs, exc, match) -> None:
    target, drafter = random_pair("qwen3")
    dec = SpeculativeDecoder(target, drafter, "ddtree", budget=8)
    with pytest.raises(exc, match=match):
        dec.generate(*args, **kwargs)


def test_request_larger_than_fixed_max_length() -> None:
    target, drafter = random_pair("qwen3")
    dec = SpeculativeDecoder(target, drafter, "ddtree", budget=8, max_length=40)
    with pytest.raises(ValueError, match="max_length"):
        dec.generate(torch.tensor([[1, 2, 3]]), 40)
    dec.generate(torch.tensor([[1, 2, 3]]), 20)  # fits: 3 + 20 + 9 <= 40


def test_register_policy_and_stats_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    from difftree_rt.policies import registry

    class Wide(DDTreePolicy):
        name = "wide_test"

    # The registry is process-wide: the test's entry goes away with it (the CLI tests compare
    # the registry with the CLI's choices).
    monkeypatch.setattr(registry, "POLICIES", dict(registry.POLICIES))
    register_policy("wide_test", Wide)
    with pytest.raises(ValueError, match="taken"):
        register_policy("ddtree", Wide)
    target = make_target("qwen3", vocab=128)
    drafter = make_drafter(target)
    out = SpeculativeDecoder(target, drafter, "wide_test", budget=5).generate(
        torch.tensor([[1, 2, 3]]), 12
    )
    s: GenerationStats = out.stats
    assert s.policy == "wide_test" and s.budget == 5 and s.prompt_len == 3
    assert s.new_tokens == 12 and s.rounds == len(s.accepted_lengths) > 0
    # The registered subclass runs exactly as the built-in it extends.
    ref = SpeculativeDecoder(target, drafter, "ddtree", budget=5).generate(
        torch.tensor([[1, 2, 3]]), 12
    )
    assert torch.equal(out.sequences, ref.sequences)
    assert s.accepted_lengths == ref.stats.accepted_lengths and s.tau == ref.stats.tau
    assert set(s.phase_time) == {"prefill", "draft", "select", "verify", "accept", "commit", "host"}
    assert all(v >= 0 for v in s.phase_time.values()) and s.total_time > 0
    assert s.as_dict()["rounds"] == s.rounds
