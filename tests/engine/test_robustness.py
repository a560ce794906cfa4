"""Robustness: the decoder stays usable after an exception or KeyboardInterrupt mid-generation,
contexts past the cache capacity fail clearly, and repeated generation keeps memory flat."""

from __future__ import annotations

import gc

import pytest
import torch
from engine_helpers import greedy_reference, random_pair

from difftree_rt import SpeculativeDecoder


def _prompt(seed: int, length: int = 9) -> torch.Tensor:
    return torch.randint(0, 128, (1, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("policy", ["ar", "chain", "ddtree"])
@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_usable_after_interrupt_mid_generation(policy: str, exc: type[BaseException]) -> None:
    target, drafter = random_pair("qwen3")
    dec = SpeculativeDecoder(target, drafter if policy != "ar" else None, policy=policy, budget=16)
    prompt = _prompt(1)
    dec.generate(prompt, max_new_tokens=4)  # the adapter now exists: interrupt it in a round
    adapter = dec.adapter
    assert adapter is not None
    method = "verify"  # every policy's round verifies a tree ("ar": the root alone)
    original = getattr(adapter, method)
    calls = {"n": 0}

    def flaky(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 3:
            raise exc("interrupted mid-generation")
        return original(*args, **kwargs)

    setattr(adapter, method, flaky)
    with pytest.raises(exc):
        dec.generate(prompt, max_new_tokens=40)
    setattr(adapter, method, original)
    # The next call starts from a clean state and is still lossless.
    out = dec.generate(_prompt(2), max_new_tokens=30)
    assert torch.equal(out.sequences, greedy_reference(target, _prompt(2), 30))


def test_context_past_capacity_is_a_clear_error() -> None:
    target, drafter = random_pair("qwen3")
    dec = SpeculativeDecoder(target, drafter, policy="ddtree", budget=16, max_length=64)
    with pytest.raises(ValueError, match="max_length=64 is too small"):
        dec.generate(_prompt(3, length=40), max_new_tokens=30)
    # Still usable with a request that fits.
    out = dec.generate(_prompt(3, length=10), max_new_tokens=20)
    assert torch.equal(out.sequences, greedy_reference(target, _prompt(3, length=10), 20))


def _live_tensors() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))


@pytest.mark.parametrize("policy", ["ar", "chain", "ddtree"])
def test_repeated_generation_keeps_tensor_count_flat(policy: str) -> None:
    """Hundreds of rounds after warm-up leave no tensors behind (bench/long_run.py does 10k)."""
    target, drafter = random_pair("qwen3")
    dec = SpeculativeDecoder(
        target, drafter if policy != "ar" else None, policy=policy, budget=32, max_length=256
    )
    for i in range(3):  # warm-up: caches, lazily built buffers
        dec.generate(_prompt(10 + i), max_new_tokens=60, temperature=float(i % 2), seed=i)
    before = _live_tensors()
    rounds = 0
    for i in range(8):
        out = dec.generate(_prompt(20 + i), max_new_tokens=60, temperature=float(i % 2), seed=i)
        rounds += out.stats.rounds
        del out  # the caller's own result is the only tensor allowed to survive a call
    assert rounds >= 60
    assert _live_tensors() - before <= 0
